"""The ``prune`` recipe step: dependency-aware channel pruning of ``ctx.model``.

Example (YAML)::

    - prune:
        macs_target: 0.5        # or ratio: 0.3 (channel ratio, like a 0.7 width multiplier)
        importance: l2          # l1 | l2 | bn | taylor | activation | apoz | redundancy
        ignored_layers: ["layer4.*"]
        per_layer: {"layer1.*": 0.1}
        reconstruct: true       # then refit the layers towards the original on the calib batches
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from ...config import Config, check
from ...recipe.registry import register_step
from ...jsonable import jsonable
from ..reconstruct.step import Reconstruction, reconstruct_in_step
from .layer_roles import unknown_layers
from .pruner import TIME_BUDGET_S, PruneResult, prune

__all__ = ["PruneStep", "prune_step"]

Importance = Literal["l1", "l2", "bn", "taylor", "activation", "apoz", "redundancy"]


@dataclass(frozen=True)
class PruneStep(Config):
    """Options of the ``prune`` step.

    Attributes:
        ratio: uniform channel ratio in ``(0, 1)`` removed from every prunable layer group.
        macs_target: instead of ``ratio``: prune until MACs are at most this fraction ``(0, 1]`` of the current.
        importance: how channels are ranked (``activation`` / ``apoz`` / ``redundancy`` need an ``analyze`` step).
        remove_dead: first remove the analysis' constant channels losslessly.
        round_to: keep widths multiples of this (e.g. 8 for tensor cores).
        ignored_layers: fnmatch patterns of layer names whose output channels stay.
        per_layer: fnmatch pattern -> channel ratio overriding ``ratio``.
        dead_tol: largest relative output error accepted when folding a dead channel inexactly (borders).
        max_steps: most iterative steps towards ``macs_target``.
        calib_batches: calibration batches used for ``taylor`` and to verify dead-channel folds; as many batches
            of the val split (held out from the analysis) measure the removal's error on new inputs.
        time_budget_s: wall-clock budget of the step in seconds (null: unlimited); on expiry the step fails naming
            the layer torch-pruning was working on.
        reconstruct: after pruning, refit the layers towards the original by least squares on the same
            calibration batches (:mod:`compress.transforms.reconstruct.step`).
    """

    ratio: float | None = None
    macs_target: float | None = None
    importance: Importance = "l2"
    remove_dead: bool = True
    round_to: int | None = None
    ignored_layers: tuple[str, ...] = ()
    per_layer: dict[str, float] = field(default_factory=dict)
    dead_tol: float = 1e-4
    max_steps: int = 10
    calib_batches: int = 4
    time_budget_s: float | None = TIME_BUDGET_S
    reconstruct: bool = False

    def validate(self) -> None:
        check(self.ratio is None or 0.0 < self.ratio < 1.0, "ratio", "a channel ratio in (0, 1) or null", self.ratio)
        check(self.macs_target is None or 0.0 < self.macs_target <= 1.0, "macs_target",
              "a fraction of the MACs in (0, 1] or null", self.macs_target)
        check(self.ratio is None or self.macs_target is None, "macs_target", "null when ratio is given (one of them)",
              self.macs_target)
        check(self.ratio is not None or self.macs_target is not None or bool(self.per_layer) or self.remove_dead,
              "ratio", "ratio, macs_target or per_layer (or remove_dead: true)", self.ratio)
        check(self.round_to is None or self.round_to >= 1, "round_to", "an integer >= 1 or null", self.round_to)
        for pattern, value in self.per_layer.items():
            check(0.0 <= value < 1.0, f"per_layer.{pattern}", "a channel ratio in [0, 1)", value)
        check(self.dead_tol >= 0.0, "dead_tol", "a number >= 0", self.dead_tol)
        check(self.max_steps >= 1, "max_steps", "an integer >= 1", self.max_steps)
        check(self.calib_batches >= 1, "calib_batches", "an integer >= 1", self.calib_batches)
        check(self.time_budget_s is None or self.time_budget_s > 0, "time_budget_s", "a number of seconds > 0 or null",
              self.time_budget_s)


@dataclass(frozen=True)
class PruneDetails(Reconstruction):
    """What the ``prune`` step did (and, with ``reconstruct: true``, the :class:`Reconstruction` fields).

    Attributes:
        result: the pruning result (MACs, params and widths before/after, dead channels, target met).
        unknown_layers: layers with weights of their own that no transform understands (left alone).
        analysis_invalidated: the run's analysis was dropped because channel indices changed.
    """

    result: PruneResult
    unknown_layers: list[str] = field(default_factory=list)
    analysis_invalidated: bool = False

    def to_plain(self) -> dict[str, Any]:
        return {**jsonable(self.result.to_dict()), "unknown_layers": list(self.unknown_layers),
                "analysis_invalidated": self.analysis_invalidated, **self.reconstruction_plain()}


@register_step("prune", PruneStep, PruneDetails)
def prune_step(ctx: Any, cfg: PruneStep) -> PruneDetails:
    """Prune channels of the model (torch-pruning dependency groups) by a ratio or down to a MACs target."""
    calib = ctx.calibration(cfg.calib_batches)
    result = prune(ctx.model, ctx.example_inputs, ratio=cfg.ratio, macs_target=cfg.macs_target,
                   importance=cfg.importance, analysis=ctx.analysis, calib=calib or None,
                   remove_dead=cfg.remove_dead, dead_tol=cfg.dead_tol, round_to=cfg.round_to,
                   ignored_layers=cfg.ignored_layers, per_layer=cfg.per_layer, max_steps=cfg.max_steps,
                   held_out=ctx.calibration(cfg.calib_batches, split="val") or None, time_budget_s=cfg.time_budget_s)
    invalidated = result.channels_after != result.channels_before and ctx.analysis is not None
    if invalidated:
        # the analysis numbers channels of the model it measured; after pruning it would point at wrong channels
        ctx.analysis = None
    details = PruneDetails(result, unknown_layers=unknown_layers(ctx.model), analysis_invalidated=invalidated)
    if cfg.reconstruct:
        details = replace(details, **reconstruct_in_step(ctx, calib, kind="prune", details=details))
    return details
