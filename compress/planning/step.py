"""Recipe step ``plan``: meet a latency / MACs / parameter target on a device in a runtime, measured, then apply
the plan.

::

    - plan: {runtime: onnxruntime, device: cpu, batch: 64, target: {latency: 0.5}}
    - plan: {target: {latency: 0.5}, device: cpu, batch: 64, forms: [prune, separable, grouped, drop]}

The step's options are :class:`~compress.planning.options.PlanOptions` themselves (every field of it), parsed
strictly from the recipe, so the recipe and :func:`~compress.planning.plan` share one validation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..recipe.registry import register_step
from ..records import StepDetails
from .apply import apply_plan
from .options import PlanOptions
from .planner import plan
from .result import Plan

__all__ = ["PlanStep", "PlanDetails", "plan_step"]


PlanStep = PlanOptions  # the step's options are the planner's: one set of fields, defaults and error wording


@dataclass(frozen=True)
class PlanDetails(StepDetails):
    """What the ``plan`` step planned, measured and applied.

    Attributes:
        plan: the plan (target, choices, predicted and measured ratios, closed-loop rounds, verdict, notes).
    """

    plan: Plan

    def to_plain(self) -> dict[str, Any]:
        return {**self.plan.as_dict(), "summary": self.plan.summary_lines()}


@register_step("plan", PlanOptions, PlanDetails)
def plan_step(ctx: Any, cfg: PlanOptions) -> PlanDetails:
    """Plan per-layer widths and rewrites that meet a measured latency/MACs/params target in ``cfg.runtime``, and
    apply them."""
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
        result = plan(ctx.model, ctx.example_inputs, cfg, analysis=analysis, calib=batches, verbose=verbose)
    result = D.broadcast_object(result)  # every rank applies the same plan
    apply_plan(ctx.model, result, ctx.example_inputs, calib=batches)
    ctx.analysis = None  # channel indices changed: the old analysis no longer describes the model
    return PlanDetails(plan=result)
