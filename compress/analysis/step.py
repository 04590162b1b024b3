"""The ``analyze`` recipe step: collect statistics on the calibration split and keep them in ``ctx.analysis``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import Config, check
from ..recipe.registry import register_step
from .collect import analyze

__all__ = ["AnalyzeStep", "analyze_step"]


@dataclass(frozen=True)
class AnalyzeStep(Config):
    """Options of the ``analyze`` step.

    Attributes:
        max_batches: calibration batches to run (``null``: all of them).
        apoz_threshold: fraction of exact zeros from which a channel is reported dead (``apoz``).
        save: write ``analysis/analysis.json`` and ``analysis/analysis.pt`` into the run directory.
    """

    max_batches: int | None = 16
    apoz_threshold: float = 0.99
    save: bool = True

    def validate(self) -> None:
        check(self.max_batches is None or self.max_batches >= 1, "max_batches", "null or an integer >= 1",
              self.max_batches)
        check(0.0 < self.apoz_threshold <= 1.0, "apoz_threshold", "a number in (0, 1]", self.apoz_threshold)


@register_step("analyze", AnalyzeStep)
def analyze_step(ctx: Any, cfg: AnalyzeStep) -> dict[str, Any]:
    """Find dead channels and channel correlations of every conv on the calibration data."""
    analysis = analyze(ctx.model, ctx.data.calib, max_batches=cfg.max_batches, device=ctx.device,
                       verbose=bool(ctx.state.get("verbose", True)) and ctx.is_main)
    ctx.analysis = analysis
    summary = analysis.summary(apoz_threshold=cfg.apoz_threshold)
    if ctx.is_main and cfg.save:
        analysis.save(ctx.out_dir / "analysis", apoz_threshold=cfg.apoz_threshold)
        summary["saved_to"] = "analysis"
    return summary
