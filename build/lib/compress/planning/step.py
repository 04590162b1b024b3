"""Recipe step ``plan``: meet a latency / MACs / parameter target on a device, measured, then apply the plan.

::

    - plan: {target: {latency: 0.5}, device: cpu, batch: 64, forms: [prune, separable, grouped, drop]}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..config import MAX_BATCH, Config, check
from ..measurement.timing import DTYPE_NAMES
from ..recipe.registry import register_step
from ..records import StepDetails
from .apply import apply_plan
from .candidates import form_kinds
from .planner import TARGETS, plan
from .result import Plan

__all__ = ["PlanStep", "plan_step"]


@dataclass(frozen=True)
class PlanStep(Config):
    """Options of the ``plan`` step.

    Attributes:
        target: exactly one of ``latency`` / ``macs`` / ``params`` mapped to a fraction of the original in (0, 1].
        device: where latency is measured and planned for.
        batch / dtype / channels_last: the inference setting planned for.
        forms: allowed changes (``prune`` and rewrite kinds).
        cache_dir: latency-table directory (default ``$COMPRESS_CACHE/latency``).
        calib_batches: calibration batches analysed when no ``analyze`` step ran before, and used to price
            dropping residual blocks (form ``drop``) and to price and build separable rewrites data-aware.
        max_iters: plan-apply-measure rounds at most.
        align: channel alignment of pruned widths (default by device and dtype).
        fold_bn: plan for and measure the deploy form, BatchNorms folded into their convs, in the original and
            every candidate alike (the model this step returns keeps its BatchNorms, for fine-tuning).
    """

    target: dict[str, float]
    device: Literal["cpu", "cuda"] = "cpu"
    batch: int = 64
    dtype: str = "float32"
    channels_last: bool = False
    forms: tuple[str, ...] = ("prune", "separable", "grouped")
    cache_dir: str | None = None
    calib_batches: int = 4
    max_iters: int = 3
    align: int | None = None
    fold_bn: bool = True

    def validate(self) -> None:
        keys = list(self.target)
        check(len(keys) == 1 and keys[0] in TARGETS, "target", f"exactly one of {', '.join(TARGETS)}",
              "<" + (", ".join(map(str, keys)) or "empty") + ">")
        value = self.target[keys[0]]
        check(0.0 < value <= 1.0, f"target.{keys[0]}", "a fraction in (0, 1]", value)
        check(1 <= self.batch <= MAX_BATCH, "batch", f"an integer in 1..{MAX_BATCH}", self.batch)
        check(self.dtype in DTYPE_NAMES, "dtype", f"one of {', '.join(DTYPE_NAMES)}", self.dtype)
        known = form_kinds()
        check(len(self.forms) > 0 and all(f in known for f in self.forms), "forms",
              f"a non-empty list of {', '.join(known)}", "<" + ", ".join(self.forms) + ">")
        check(self.calib_batches >= 1, "calib_batches", "an integer >= 1", self.calib_batches)
        check(self.max_iters >= 1, "max_iters", "an integer >= 1", self.max_iters)
        check(self.align is None or self.align >= 1, "align", "null or an integer >= 1", self.align)


@dataclass(frozen=True)
class PlanDetails(StepDetails):
    """What the ``plan`` step planned, measured and applied.

    Attributes:
        plan: the plan (target, choices, predicted and measured ratios, closed-loop rounds, verdict, notes).
    """

    plan: Plan

    def to_plain(self) -> dict[str, Any]:
        return {**self.plan.as_dict(), "summary": self.plan.summary_lines()}


@register_step("plan", PlanStep, PlanDetails)
def plan_step(ctx: Any, cfg: PlanStep) -> PlanDetails:
    """Plan per-layer widths and rewrites that meet a measured latency/MACs/params target, and apply them."""
    from ..analysis import analyze
    from ..training import distributed as D

    ctx.model = D.unwrap(ctx.model)
    verbose = ctx.verbose and ctx.is_main
    analysis = ctx.analysis
    batches = ctx.calibration(cfg.calib_batches)
    if analysis is None:  # on every rank: analyze all-reduces its statistics
        analysis = analyze(ctx.model, batches, verbose=verbose)
    result = None
    if ctx.is_main:  # one process measures; ranks timing at once would slow each other down
        result = plan(ctx.model, ctx.example_inputs, target=dict(cfg.target), device=cfg.device, batch=cfg.batch,
                      dtype=cfg.dtype, channels_last=cfg.channels_last, analysis=analysis, forms=cfg.forms,
                      calib=batches, calib_batches=len(batches),
                      max_iters=cfg.max_iters, align=cfg.align, cache_dir=cfg.cache_dir, fold_bn=cfg.fold_bn,
                      verbose=verbose)
    result = D.broadcast_object(result)  # every rank applies the same plan
    apply_plan(ctx.model, result, ctx.example_inputs, calib=batches)
    ctx.analysis = None  # channel indices changed: the old analysis no longer describes the model
    return PlanDetails(plan=result)
