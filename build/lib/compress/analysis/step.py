"""The ``analyze`` recipe step: collect statistics on the calibration split and keep them in ``ctx.analysis``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import Config, check
from ..recipe.registry import register_step
from ..records import StepDetails
from .collect import analyze

__all__ = ["AnalyzeStep", "AnalyzeDetails", "analyze_step"]


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


@dataclass(frozen=True)
class AnalyzeDetails(StepDetails):
    """What the ``analyze`` step found (the fields of :meth:`compress.analysis.Analysis.summary`).

    Attributes:
        layers: per conv: its point, channels, dead count by reason, suggested groups.
        batches / images: calibration data seen.
        channels / dead_channels: totals over the convs.
        apoz_threshold / min_group_score: the thresholds the summary used.
        notes: layers without correlation statistics and why.
        saved_to: the run-relative directory of ``analysis.json`` / ``analysis.pt`` (``None``: not saved).
    """

    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    batches: int = 0
    images: int = 0
    channels: int = 0
    dead_channels: int = 0
    apoz_threshold: float = 0.99
    min_group_score: float = 0.0
    notes: list[str] = field(default_factory=list)
    saved_to: str | None = None


@register_step("analyze", AnalyzeStep, AnalyzeDetails)
def analyze_step(ctx: Any, cfg: AnalyzeStep) -> AnalyzeDetails:
    """Find dead channels and channel correlations of every conv on the calibration data."""
    analysis = analyze(ctx.model, ctx.data.calib, max_batches=cfg.max_batches, device=ctx.device,
                       verbose=ctx.verbose and ctx.is_main)
    ctx.analysis = analysis
    saved = ctx.is_main and cfg.save
    if saved:
        analysis.save(ctx.out_dir / "analysis", apoz_threshold=cfg.apoz_threshold)
    return AnalyzeDetails(**analysis.summary(apoz_threshold=cfg.apoz_threshold),
                          saved_to="analysis" if saved else None)
