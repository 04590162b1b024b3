"""What a training run did: per-step loss and learning rate, per-epoch accuracy, best epoch, time taken."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TrainHistory"]


@dataclass
class TrainHistory:
    """Record of :func:`compress.training.fit`.

    Attributes:
        step_loss: global (all-rank mean) training loss of every optimizer step.
        step_lr: learning rate used by every step.
        epochs: one dict per (possibly partial) epoch: ``epoch, steps, loss, train_acc, val_acc, lr``.
        best_epoch: epoch with the best val accuracy (``None`` without a val loader).
        best_val_acc: that accuracy.
        steps: optimizer steps done.
        seconds: wall time spent training, summed over resumed sessions.
        stopped_early: early stopping triggered (the best-val weights were restored).
        resumed_from_step: step the last resume started from, or ``None``.
    """

    step_loss: list[float] = field(default_factory=list)
    step_lr: list[float] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_acc: float | None = None
    steps: int = 0
    seconds: float = 0.0
    stopped_early: bool = False
    resumed_from_step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainHistory":
        return cls(**data)

    def summary(self) -> dict[str, Any]:
        """Compact, JSON-friendly facts for run records (no per-step lists)."""
        last = self.epochs[-1] if self.epochs else {}
        return {"steps": self.steps, "epochs": len(self.epochs), "final_loss": last.get("loss"),
                "train_acc": last.get("train_acc"), "val_acc": last.get("val_acc"), "best_epoch": self.best_epoch,
                "best_val_acc": self.best_val_acc, "stopped_early": self.stopped_early,
                "resumed_from_step": self.resumed_from_step, "seconds": round(self.seconds, 3)}
