"""The ``prune`` recipe step: dependency-aware channel pruning of ``ctx.model``.

Example (YAML)::

    - prune:
        macs_target: 0.5        # or ratio: 0.3 (channel ratio, like a 0.7 width multiplier)
        importance: l2          # l1 | l2 | bn | taylor | activation | apoz | redundancy | reconstruction
        ignored_layers: ["layer4.*"]
        per_layer: {"layer1.*": 0.1}
        reconstruct: true       # then refit the layers towards the original on the calib batches
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ...config import check
from ...recipe.registry import register_step
from ...jsonable import jsonable
from ..reconstruct.step import Reconstruction, reconstruct_in_step
from .layer_roles import unknown_layers
from .config import PruneConfig
from .pruner import PruneResult, prune

__all__ = ["PruneStep", "prune_step"]

@dataclass(frozen=True)
class PruneStep(PruneConfig):
    """Options of the ``prune`` step: every :class:`~compress.transforms.prune.config.PruneConfig` field (validated
    there, once), plus the step's own.

    Attributes:
        calib_batches: calibration batches used for ``taylor`` and to verify dead-channel folds; as many batches
            of the val split (held out from the analysis) measure the removal's error on new inputs.
        reconstruct: after pruning, refit the layers towards the original by least squares on the same
            calibration batches (:mod:`compress.transforms.reconstruct.step`).
    """

    calib_batches: int = 4
    reconstruct: bool = False

    def validate(self) -> None:
        super().validate()
        check(self.calib_batches >= 1, "calib_batches", "an integer >= 1", self.calib_batches)


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

    def report_notes(self) -> list[str]:
        """One line per channel group left unpruned (its root layer and the reason), and the MACs shortfall."""
        r = self.result
        lines = [f"channel group of '{s.root}' left unpruned: {s.reason}" for s in r.skipped]
        if r.target_met is False:
            lines.append(f"MACs target {r.macs_target} not met: {r.macs_fraction:.3f} of the MACs reached "
                         f"({r.shortfall:.3f} short)")
        return lines


@register_step("prune", PruneStep, PruneDetails)
def prune_step(ctx: Any, cfg: PruneStep) -> PruneDetails:
    """Prune channels of the model (torch-pruning dependency groups) by a ratio or down to a MACs target."""
    calib = ctx.calibration(cfg.calib_batches)
    result = prune(ctx.model, ctx.example_inputs, cfg, analysis=ctx.analysis, calib=calib or None,
                   held_out=ctx.calibration(cfg.calib_batches, split="val") or None)
    invalidated = result.channels_after != result.channels_before and ctx.analysis is not None
    if invalidated:
        # the analysis numbers channels of the model it measured; after pruning it would point at wrong channels
        ctx.analysis = None
    details = PruneDetails(result, unknown_layers=unknown_layers(ctx.model), analysis_invalidated=invalidated)
    if cfg.reconstruct:
        details = replace(details, **reconstruct_in_step(ctx, calib, kind="prune", details=details))
    return details
