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
from ..recipe.registry import register_step
from . import distributed as D
from .calibrate import calibrate_bn
from .config import DistillConfig, TrainConfig
from .loop import fit

__all__ = ["FinetuneStep", "CalibrateStep", "finetune", "calibrate"]


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


@register_step("finetune", FinetuneStep)
def finetune(ctx: Any, cfg: FinetuneStep) -> dict[str, Any]:
    """Fine-tune the model on the train split, distilling from the baseline unless ``distill: null``."""
    ctx.model = D.unwrap(ctx.model)
    history = fit(ctx.model, ctx.data.train, val_loader=ctx.data.val, config=cfg.train_config(), device=ctx.device,
                  teacher=ctx.baseline if cfg.distill is not None else None, distill=cfg.distill,
                  checkpoint_path=ctx.out_dir / "checkpoints" / f"step{ctx.step_index}.pt",
                  resume=bool(ctx.state.get("resume", False)), seed=ctx.seed + ctx.step_index,
                  verbose=bool(ctx.state.get("verbose", True)))
    return {"distill": to_plain(cfg.distill), **history.summary()}


@register_step("calibrate", CalibrateStep)
def calibrate(ctx: Any, cfg: CalibrateStep) -> dict[str, Any]:
    """Re-estimate BatchNorm running statistics on calibration batches (no gradients, no weight change)."""
    ctx.model = D.unwrap(ctx.model)
    layers = calibrate_bn(ctx.model, ctx.data.calib, max_batches=cfg.max_batches, device=ctx.device,
                          verbose=bool(ctx.state.get("verbose", True)) and ctx.is_main)
    D.broadcast_module(ctx.model)  # ranks must agree even if the calibration loader's order differs per rank
    return {"bn_layers": layers, "batches": min(cfg.max_batches, len(ctx.data.calib))}
