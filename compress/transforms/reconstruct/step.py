"""Recipe step ``reconstruct``, and the shared pass behind the ``reconstruct: true`` option of ``prune``,
``rewrite`` and ``drop``: layer-wise least-squares refit of ``ctx.model`` towards the run's baseline.

Example::

    - prune: {macs_target: 0.5, reconstruct: true}   # refit right after pruning, on the step's calib batches
    - finetune: {epochs: 1}
    - reconstruct: {calib_batches: 8}                 # or as a step of its own, anywhere after a transform

The reference is always ``ctx.baseline`` (the run's frozen original), so the pass works after any number of
prune, rewrite and drop steps. Which original channel each pruned channel is: weight matching finds it while the
pruned weights are still slices of the original's; after a ``finetune`` they are not, so the channels the
``prune`` steps kept (``PruneResult.kept``) are composed from the run's records (:func:`recorded_channels`) and
passed on, with every layer no step pruned in its own order. A step that may reorder channels without recording
how (a rewrite that absorbed a permute, ``plan``, a step this module does not know) ends that chain: then
weights and data must identify the channels, and layers they do not are skipped with the reason in their record.

When a step reconstructs, its recorded metrics are measured after the reconstruction and its details carry the
top-1 measured just before it (:class:`Reconstruction`), so the report shows both.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any, Sequence

from ...config import check
from ...recipe.registry import register_step
from ...records import StepDetails
from ...jsonable import jsonable
from .config import FitOptions, ReconstructOptions

if TYPE_CHECKING:  # the pass imports torch-pruning (bias slots); recipe parsing need not
    import torch
    from torch import nn

    from .layerwise import ReconstructRecord

__all__ = ["ReconstructStep", "Reconstruction", "ReconstructDetails", "reconstruct_step", "reconstruct_in_step",
           "recorded_channels", "summary", "KEEPS_CHANNELS"]

LOG = logging.getLogger(__name__)

# Step kinds that neither renumber nor reorder the output channels of the layers that remain (``prune`` renumbers
# them and records how; ``rewrite`` reorders them only when it absorbs a permute, which its records say).
KEEPS_CHANNELS = frozenset({"baseline", "analyze", "calibrate", "finetune", "drop", "reconstruct", "report"})


@dataclasses.dataclass(frozen=True)
class ReconstructStep(FitOptions):
    """Options of the ``reconstruct`` step: the solver's :class:`~compress.transforms.reconstruct.config.FitOptions`
    (``ridge``, ``rows_per_batch``, ``max_condition``, ``seed``) plus the two below; validated on construction,
    errors name the field.

    Attributes:
        calib_batches: calibration batches the layers are fitted on (``>= 1``).
        layers: fnmatch patterns of the original's conv / linear names to fit; empty: every one present in both.
    """

    calib_batches: int = 8
    layers: tuple[str, ...] = ()

    def validate(self) -> None:
        super().validate()
        check(isinstance(self.calib_batches, int) and not isinstance(self.calib_batches, bool)
              and self.calib_batches >= 1, "calib_batches", "an integer >= 1", self.calib_batches)
        check(all(isinstance(p, str) and p for p in self.layers), "layers",
              "a list of layer names or fnmatch patterns (non-empty strings)", list(self.layers))


def summary(records: Sequence["ReconstructRecord"]) -> dict[str, Any]:
    """``{fitted, layers, not_fitted: {layer: reason}, mean_error_before, mean_error_after}`` of a pass; the means
    are over the fitted layers (``None`` when none was)."""
    fitted = [r for r in records if r.status == "fitted"]

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    return {"fitted": len(fitted), "layers": len(records),
            "not_fitted": {r.layer: r.reason for r in records if r.status != "fitted"},
            "mean_error_before": mean([r.error_before for r in fitted]),
            "mean_error_after": mean([r.error_after for r in fitted])}


@dataclasses.dataclass(frozen=True)
class Reconstruction(StepDetails):
    """Details fields of a step that may reconstruct (keyword-only, so a subclass keeps its own required fields).

    Attributes:
        reconstruction: one :class:`~compress.transforms.reconstruct.layerwise.ReconstructRecord` per candidate
            layer, ``None`` when the step did not reconstruct.
        top1_before_reconstruction: test top-1 (``ctx.measure()``) of the model after the transform and before
            the reconstruction; the step's recorded metrics are measured after it.
    """

    reconstruction: list[ReconstructRecord] | None = dataclasses.field(default=None, kw_only=True)
    top1_before_reconstruction: float | None = dataclasses.field(default=None, kw_only=True)

    def reconstruction_plain(self) -> dict[str, Any]:
        """The two fields as strict JSON (records as mappings), plus the pass's :func:`summary`."""
        records = self.reconstruction
        return {"reconstruction": None if records is None else jsonable(records),
                "reconstruction_summary": None if records is None else jsonable(summary(records)),
                "top1_before_reconstruction": jsonable(self.top1_before_reconstruction)}

    def to_plain(self) -> dict[str, Any]:
        return {**super().to_plain(), **self.reconstruction_plain()}


@dataclasses.dataclass(frozen=True)
class ReconstructDetails(Reconstruction):
    """What the ``reconstruct`` step did: :attr:`reconstruction` (always set) and the top-1 before it."""


def _reorders(kind: str, details: Any) -> bool:
    """Whether a step of ``kind`` may have renumbered or reordered channels without a ``PruneResult`` saying how."""
    if kind == "rewrite":
        return any(status == "absorbed" for r in getattr(details, "layers", ())
                   for status in (r.details.get("permutes") or {}).values())
    return kind not in KEEPS_CHANNELS


def recorded_channels(steps: Sequence[tuple[str, Any]], original: "nn.Module") -> dict[str, "torch.Tensor"]:
    """``{layer: (C,) original channel of each current output channel}`` as the run's records prove it.

    Args:
        steps: ``(kind, details)`` of the run's steps in order (the current step last, if it changed the model).
        original: the run's baseline; its convs / linears are the layers.

    Returns:
        While no step may have reordered channels unrecorded (see :data:`KEEPS_CHANNELS`): every layer of
        ``original``, the pruned ones composed from the ``prune`` steps' ``details.result.kept`` and the others in
        their own order (a layer whose widths disagree with the records is left out). After such a step: ``{}``
        (weights and data then identify channels, in :func:`~compress.transforms.reconstruct.reconstruct`).
    """
    import torch

    from ..prune.layer_roles import layer_width
    from ..prune.pruner import PruneResult

    origin = {n: torch.arange(layer_width(m)) for n, m in original.named_modules() if layer_width(m)}
    for kind, details in steps:
        result = getattr(details, "result", None)
        if isinstance(result, PruneResult):
            for name, kept in result.kept.items():
                before = origin.pop(name, None)
                if before is not None and before.numel() == result.channels_before.get(name):
                    origin[name] = before[torch.as_tensor(kept, dtype=torch.long)]
                elif before is None:  # a layer inside a rewrite of an original layer: that layer is renumbered
                    for parent in [p for p in origin if name.startswith(p + ".")]:
                        origin.pop(parent)
        elif _reorders(kind, details):
            return {}
    return origin


def reconstruct_in_step(ctx: Any, batches: list, *, kind: str, details: Any = None,
                        options: ReconstructStep | None = None) -> dict[str, Any]:
    """Measure top-1, then reconstruct ``ctx.model`` towards ``ctx.baseline`` on ``batches``.

    Args:
        ctx: the :class:`~compress.context.RunContext`.
        batches: ``[(images (B, C, H, W), labels (B,))]`` from ``ctx.calibration``.
        kind: the running step's kind; ``details`` what it did so far (a ``prune`` step's result is composed
            with the earlier records, see :func:`recorded_channels`).
        options: the solver options (default: :class:`ReconstructStep` defaults with ``len(batches)`` batches).

    Returns:
        The :class:`Reconstruction` fields, ``{"reconstruction": [...], "top1_before_reconstruction": top1}``,
        for ``dataclasses.replace`` on the step's details.
    """
    from ...errors import CompressError
    from ...training import distributed as D
    from .layerwise import reconstruct

    if not batches:
        raise CompressError("reconstruct: the calibration split gave no batches (data.calib_size is 0?)")
    options = options or ReconstructStep(calib_batches=len(batches))
    before = ctx.measure()["top1"]
    channels = recorded_channels([*((r.kind, r.details) for r in ctx.records), (kind, details)], ctx.baseline)
    solver = ReconstructOptions(max_batches=options.calib_batches, **options.fit_kwargs())
    records = reconstruct(D.unwrap(ctx.model), ctx.baseline, batches, solver, layers=list(options.layers) or None,
                          channels=channels, verbose=ctx.verbose)
    done = summary(records)
    LOG.info("reconstruct (%s): %d of %d layers fitted; top-1 before it %.4f", kind, done["fitted"], done["layers"],
             before)
    return {"reconstruction": records, "top1_before_reconstruction": before}


@register_step("reconstruct", ReconstructStep, ReconstructDetails)
def reconstruct_step(ctx: Any, cfg: ReconstructStep) -> ReconstructDetails:
    """Refit each conv / linear by ridge least squares so its output matches the original's (no gradient steps)."""
    return ReconstructDetails(**reconstruct_in_step(ctx, ctx.calibration(cfg.calib_batches), kind="reconstruct",
                                                    options=cfg))
