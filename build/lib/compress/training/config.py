"""Options of the training loop (:class:`TrainConfig`) and of knowledge distillation (:class:`DistillConfig`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..config import Config, check

__all__ = ["TrainConfig", "DistillConfig", "Teacher", "Checkpoint"]


@dataclass(frozen=True)
class TrainConfig(Config):
    """How :func:`compress.training.fit` trains.

    Attributes:
        epochs: passes over the training data; fractional values are allowed for short fine-tunes.
        steps: optimizer steps; when set it overrides ``epochs``.
        optimizer: ``"sgd"`` (momentum, optional Nesterov) or ``"adamw"``.
        lr: peak learning rate (reached after warm-up).
        momentum: SGD momentum (ignored by AdamW).
        weight_decay: decoupled for AdamW, L2 for SGD.
        nesterov: Nesterov momentum for SGD (needs ``momentum > 0``).
        schedule: per-step ``"cosine"`` decay to zero or ``"constant"`` after warm-up.
        warmup_epochs: linear warm-up length, in epochs (may be fractional).
        label_smoothing: label smoothing of the cross-entropy term.
        grad_clip: clip the global gradient norm to this value, or ``None``.
        amp: bf16 autocast on CUDA (ignored on CPU).
        channels_last: channels-last memory format on CUDA (ignored on CPU).
        early_stop_patience: stop after this many epochs without a better val accuracy and restore the best
            weights; ``None`` disables. Uses the val split, never test.
        checkpoint_every: write a checkpoint every this many steps (0: only at the end).
        log_every: refresh the progress-bar postfix every this many steps.
    """

    epochs: float = 1
    steps: int | None = None
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = 0
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    amp: bool = True
    channels_last: bool = True
    early_stop_patience: int | None = None
    checkpoint_every: int = 0
    log_every: int = 50

    def validate(self) -> None:
        check(self.epochs >= 0, "epochs", "a number >= 0", self.epochs)
        check(self.steps is None or self.steps >= 0, "steps", "an integer >= 0 or null", self.steps)
        check(self.lr > 0, "lr", "a number > 0", self.lr)
        check(0 <= self.momentum < 1, "momentum", "a number in [0, 1)", self.momentum)
        check(self.weight_decay >= 0, "weight_decay", "a number >= 0", self.weight_decay)
        check(not (self.nesterov and self.optimizer == "sgd" and self.momentum == 0), "nesterov",
              "false when momentum is 0 (Nesterov needs momentum)", self.nesterov)
        check(self.warmup_epochs >= 0, "warmup_epochs", "a number >= 0", self.warmup_epochs)
        check(0 <= self.label_smoothing < 1, "label_smoothing", "a number in [0, 1)", self.label_smoothing)
        check(self.grad_clip is None or self.grad_clip > 0, "grad_clip", "a number > 0 or null", self.grad_clip)
        check(self.early_stop_patience is None or self.early_stop_patience >= 1, "early_stop_patience",
              "an integer >= 1 or null", self.early_stop_patience)
        check(self.checkpoint_every >= 0, "checkpoint_every", "an integer >= 0 (0: only at the end)",
              self.checkpoint_every)
        check(self.log_every >= 1, "log_every", "an integer >= 1", self.log_every)


@dataclass(frozen=True)
class DistillConfig(Config):
    """Knowledge distillation from the frozen baseline (teacher) into the compressed model (student).

    Attributes:
        alpha: weight of the soft KL term; ``1 - alpha`` weighs the label cross-entropy.
        temperature: softmax temperature of both logits in the KL term.
        features: names of layers (``model.named_modules()`` names present in both models) whose outputs are
            matched with an MSE loss, through a learned 1x1 adapter when the widths differ.
        feature_weight: weight of the summed feature losses.
    """

    alpha: float
    temperature: float = 4.0
    features: tuple[str, ...] = ()
    feature_weight: float = 1.0

    def validate(self) -> None:
        check(0 <= self.alpha <= 1, "alpha", "a number in [0, 1]", self.alpha)
        check(self.temperature > 0, "temperature", "a number > 0", self.temperature)
        check(len(set(self.features)) == len(self.features), "features", "distinct layer names", self.features)
        check(all(self.features), "features", "non-empty layer names", self.features)
        check(self.feature_weight >= 0, "feature_weight", "a number >= 0", self.feature_weight)


@dataclass(frozen=True)
class Teacher:
    """Distillation for :func:`~compress.training.fit`: the frozen model whose logits (and, with
    ``config.features``, intermediate features) the student learns, and how.

    Attributes:
        model: the teacher, maps ``(B, C, H, W)`` to ``(B, K)`` logits like the student; never changed.
        config: the distillation settings (default ``alpha=0.7``).
    """

    model: Any
    config: DistillConfig = DistillConfig(alpha=0.7)


@dataclass(frozen=True)
class Checkpoint:
    """Where :func:`~compress.training.fit` checkpoints, and whether it continues from that file.

    Attributes:
        path: written every ``TrainConfig.checkpoint_every`` steps, at the end, and on SIGINT/SIGTERM.
        resume: continue from ``path`` when it exists (a finished checkpoint returns at once).
    """

    path: Any
    resume: bool = False
