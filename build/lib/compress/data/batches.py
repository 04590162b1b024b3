"""Reading calibration batches: the input tensor of a loader batch, and how many batches a pass will see."""
from __future__ import annotations

from typing import Any, Iterable

import torch

from ..errors import CompressError

__all__ = ["batch_inputs", "batch_count"]


def batch_inputs(batch: Any, *, what: str) -> torch.Tensor:
    """The input tensor of a loader batch: ``(inputs, targets, ...)`` or bare inputs ``(B, C, H, W)``.

    Args:
        batch: one item of a loader.
        what: the caller, named in the error (e.g. ``"analysis"``).

    Raises:
        CompressError: the batch holds no tensor where the inputs should be.
    """
    x = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    if not isinstance(x, torch.Tensor):
        raise CompressError(f"{what}: loader batches must be a tensor or an (inputs, targets) pair, "
                            f"got {type(batch).__name__}")
    return x


def batch_count(loader: Iterable, max_batches: int | None) -> int | None:
    """Batches a pass over ``loader`` (at most ``max_batches``) will see, or ``None`` when unknown (progress bars)."""
    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    if max_batches is None:
        return total
    return max_batches if total is None else min(total, max_batches)
