"""Training curves on disk: CSV always, TensorBoard event files when ``tensorboard`` is installed.

``write_curves(history, directory)`` writes ``steps.csv`` (``step, loss, lr``: every optimizer step) and
``epochs.csv`` (``epoch, steps, loss, train_acc, val_acc, lr``: one row per epoch) atomically, and, with
TensorBoard available, an event file in ``directory/tensorboard`` (``loss`` and ``lr`` per step, accuracies per
epoch). The report plots the same numbers (``plots/training_*.png``).
"""
from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from ..io import atomic_write_text
from .history import TrainHistory

__all__ = ["write_curves", "STEP_FIELDS", "EPOCH_FIELDS"]

LOG = logging.getLogger(__name__)
STEP_FIELDS = ("step", "loss", "lr")
EPOCH_FIELDS = ("epoch", "steps", "loss", "train_acc", "val_acc", "lr")


def _csv(rows: list[dict], fields: tuple[str, ...]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _tensorboard(history: TrainHistory, directory: Path) -> Path | None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra
        return None
    path = directory / "tensorboard"
    writer = SummaryWriter(log_dir=str(path))
    try:
        for step, (loss, lr) in enumerate(zip(history.step_loss, history.step_lr), start=1):
            writer.add_scalar("train/loss", loss, step)
            writer.add_scalar("train/lr", lr, step)
        for row in history.epochs:
            for key in ("train_acc", "val_acc"):
                if row.get(key) is not None:
                    writer.add_scalar(f"epoch/{key}", row[key], row["epoch"])
    finally:
        writer.close()
    return path


def write_curves(history: TrainHistory, directory: str | Path) -> list[Path]:
    """Write the curves of ``history`` into ``directory``; returns the files (and TensorBoard folder) written."""
    directory = Path(directory)
    steps = [{"step": i, "loss": loss, "lr": lr}
             for i, (loss, lr) in enumerate(zip(history.step_loss, history.step_lr), start=1)]
    written = [atomic_write_text(directory / "steps.csv", _csv(steps, STEP_FIELDS)),
               atomic_write_text(directory / "epochs.csv", _csv(history.epochs, EPOCH_FIELDS))]
    board = _tensorboard(history, directory)
    if board is not None:
        written.append(board)
    else:
        LOG.info("training curves: tensorboard not installed, CSV only (pip install 'convnet-compress[tensorboard]')")
    return written
