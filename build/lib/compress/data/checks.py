"""Sanity checks of loaded datasets, run before anything trains on them: non-empty, labels inside the head."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset

from ..errors import CompressError

__all__ = ["check_nonempty", "check_labels", "dataset_labels"]


def check_nonempty(dataset: Dataset, what: str) -> None:
    """Raise :class:`CompressError` when the ``what`` split holds no image."""
    if len(dataset) == 0:
        raise CompressError(f"data: the {what} split is empty (check data.root and the *_subset options)")


def dataset_labels(dataset: Dataset, *, load: bool = False) -> torch.Tensor | None:
    """All labels ``(N,)`` int64 when they can be read without loading images, else ``None``.

    Knows ``TensorImages`` (``.labels``), torchvision folder datasets (``.targets``) and ``Subset`` of them.
    With ``load=True`` any other dataset is iterated once instead (``dataset[i][1]``), so a tensor is returned.
    """
    if isinstance(dataset, Subset):
        inner = dataset_labels(dataset.dataset)
        if inner is not None:
            return inner[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    for attr in ("labels", "targets"):
        labels = getattr(dataset, attr, None)
        if isinstance(labels, torch.Tensor):
            return labels.long().flatten()
        if isinstance(labels, (list, tuple)) and all(isinstance(v, int) for v in labels):
            return torch.tensor(labels, dtype=torch.long)
    if load:
        return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.long)
    return None


def check_labels(dataset: Dataset, num_classes: int, what: str, *, source: str) -> None:
    """Raise :class:`CompressError` when a label of the ``what`` split is outside ``0..num_classes-1``.

    A label the model has no output for makes cross-entropy fail deep inside training (or, on CUDA, a
    device-side assert); found here, the message can name the split and the value.
    """
    labels = dataset_labels(dataset)
    if labels is None or labels.numel() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        count = int(((labels < 0) | (labels >= num_classes)).sum())
        raise CompressError(f"data: the {what} split of {source} has label {bad} ({count} images) outside "
                            f"0..{num_classes - 1}; expected labels below the {num_classes} classes "
                            "(a corrupted label file, or data.num_classes too small)")
