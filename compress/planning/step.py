"""Recipe step ``plan``: meet a latency / MACs / parameter target on a device in a runtime, measured, then apply
the plan.

::

    - plan: {runtime: onnxruntime, device: cpu, batch: 64, target: {latency: 0.5}}
    - plan: {target: {latency: 0.5}, device: cpu, batch: 64, forms: [prune, separable, grouped, drop]}
    - plan: {target: {macs: 0.5}, reconstruct: true}   # then refit the layers towards the original

The step's options are :class:`~compress.planning.options.PlanOptions` themselves (every field of it) plus
``reconstruct``, parsed strictly from the recipe, so the recipe and :func:`~compress.planning.plan` share one
validation.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..recipe.registry import register_step
from ..transforms.reconstruct.step import Reconstruction, reconstruct_in_step
from .apply import apply_plan
from .options import PlanOptions
from .planner import plan
from .result import Plan

__all__ = ["PlanStep", "PlanDetails", "plan_step"]


@dataclass(frozen=True)
class PlanStep(PlanOptions):
    """Options of the ``plan`` step: the planner's own (:class:`~compress.planning.options.PlanOptions`: one set
    of fields, defaults and error wording) plus the one below.

    Attributes:
        reconstruct: after applying the plan, refit the layers towards the original by least squares on the
            step's ``calib_batches`` (:mod:`compress.transforms.reconstruct.step`); the step's recorded metrics
            are then measured after the refit and its details carry the top-1 before it.
    """

    reconstruct: bool = False


@dataclass(frozen=True)
class PlanDetails(Reconstruction):
    """What the ``plan`` step planned, measured and applied (and, with ``reconstruct: true``, the
    :class:`~compress.transforms.reconstruct.step.Reconstruction` fields).

    Attributes:
        plan: the plan (target, choices, predicted and measured ratios, closed-loop rounds, verdict, notes).
    """

    plan: Plan

    def to_plain(self) -> dict[str, Any]:
        return {**self.plan.as_dict(), "summary": self.plan.summary_lines(), **self.reconstruction_plain()}


@register_step("plan", PlanStep, PlanDetails)
def plan_step(ctx: Any, cfg: PlanStep) -> PlanDetails:
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
    details = PlanDetails(plan=result)
    if cfg.reconstruct:  # right after the plan its weights are slices of the original's: weight matching finds them
        details = dataclasses.replace(details, **reconstruct_in_step(ctx, batches, kind="plan", details=details))
    return details
