"""Recipe steps ``finetune`` (training with distillation from the baseline) and ``calibrate`` (BN statistics).

``finetune`` options are the :class:`TrainConfig` fields, flattened, plus ``distill`` (on by default with
``alpha: 0.7``; ``distill: null`` trains on labels only)::

    - finetune: {epochs: 1, lr: 0.02, warmup_epochs: 0.1, distill: {alpha: 0.7, temperature: 4}}
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..config import Config, check, to_plain
from ..jsonable import jsonable
from ..recipe.registry import register_step
from ..records import StepDetails
from . import distributed as D
from .calibrate import calibrate_bn
from .config import Checkpoint, DistillConfig, Teacher, TrainConfig
from .curves import write_curves
from .history import TrainHistory
from .loop import fit

__all__ = ["FinetuneStep", "CalibrateStep", "FinetuneDetails", "CalibrateDetails", "finetune", "calibrate"]


@dataclass(frozen=True)
class FinetuneStep(TrainConfig):
    """Options of the ``finetune`` step: every :class:`TrainConfig` field, plus ``distill``.

    Attributes:
        distill: distillation from the run's baseline (the teacher); ``None`` trains on labels only.
    """

    # None first: a malformed mapping then reports its own field (e.g. distill.alpha) rather than "or null".
    distill: None | DistillConfig = DistillConfig(alpha=0.7)

    def train_config(self) -> TrainConfig:
        """The plain :class:`TrainConfig` part."""
        return TrainConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)})


@dataclass(frozen=True)
class CalibrateStep(Config):
    """Options of the ``calibrate`` step.

    Attributes:
        max_batches: calibration batches averaged into each BatchNorm's running statistics.
    """

    max_batches: int = 32

    def validate(self) -> None:
        check(self.max_batches >= 1, "max_batches", "an integer >= 1", self.max_batches)


CURVE_POINTS = 200  # training-loss points per fine-tune kept in report.json (the CSV keeps every step)


@dataclass(frozen=True)
class FinetuneDetails(StepDetails):
    """What the ``finetune`` step trained.

    Attributes:
        distill: the distillation settings used (``None``: labels only).
        history: the full training record (per-step loss and learning rate, per-epoch accuracy, best epoch).
        curves: run-relative directory of the curves (``steps.csv``, ``epochs.csv``, ``tensorboard/``), or
            ``None`` on ranks that write nothing.
    """

    distill: dict[str, Any] | None
    history: TrainHistory
    curves: str | None = None

    def to_plain(self) -> dict[str, Any]:
        h = self.history
        stride = max(1, len(h.step_loss) // CURVE_POINTS)  # the report keeps the curve's shape, the CSV every step
        curve = {"step": list(range(1, len(h.step_loss) + 1, stride)), "loss": h.step_loss[::stride],
                 "epochs": [{k: e.get(k) for k in ("epoch", "steps", "loss", "val_acc")} for e in h.epochs]}
        return {"distill": self.distill, "curves": self.curves, "curve": jsonable(curve), **jsonable(h.summary())}


@dataclass(frozen=True)
class CalibrateDetails(StepDetails):
    """What the ``calibrate`` step re-estimated.

    Attributes:
        bn_layers: BatchNorm layers whose running statistics were re-estimated.
        batches: calibration batches averaged.
    """

    bn_layers: int
    batches: int


@register_step("finetune", FinetuneStep, FinetuneDetails)
def finetune(ctx: Any, cfg: FinetuneStep) -> FinetuneDetails:
    """Fine-tune the model on the train split, distilling from the baseline unless ``distill: null``."""
    ctx.model = D.unwrap(ctx.model)
    history = fit(ctx.model, ctx.data.train, val_loader=ctx.data.val, config=cfg.train_config(), device=ctx.device,
                  teacher=Teacher(ctx.baseline, cfg.distill) if cfg.distill is not None else None,
                  checkpoint=Checkpoint(ctx.out_dir / "checkpoints" / f"step{ctx.step_index}.pt", resume=ctx.resume),
                  seed=ctx.seed + ctx.step_index, verbose=ctx.verbose)
    curves = None
    if ctx.is_main:
        curves = f"curves/step{ctx.step_index}"
        write_curves(history, ctx.out_dir / curves)
    return FinetuneDetails(distill=to_plain(cfg.distill), history=history, curves=curves)


@register_step("calibrate", CalibrateStep, CalibrateDetails)
def calibrate(ctx: Any, cfg: CalibrateStep) -> CalibrateDetails:
    """Re-estimate BatchNorm running statistics on calibration batches (no gradients, no weight change)."""
    ctx.model = D.unwrap(ctx.model)
    layers = calibrate_bn(ctx.model, ctx.data.calib, max_batches=cfg.max_batches, device=ctx.device,
                          verbose=ctx.verbose and ctx.is_main)
    D.broadcast_module(ctx.model)  # ranks must agree even if the calibration loader's order differs per rank
    return CalibrateDetails(bn_layers=layers, batches=min(cfg.max_batches, len(ctx.data.calib)))
