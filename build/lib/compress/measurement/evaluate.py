"""Accuracy of a classifier on a loader: top-1/top-5, per-class accuracy, loss, agreement with a reference."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..errors import CompressError
from ..modes import evaluating
from .util import model_device

__all__ = ["Evaluation", "evaluate"]


@dataclass
class Evaluation:
    """Result of :func:`evaluate`. Accuracies are fractions in ``[0, 1]``.

    Attributes:
        top1 / top5: top-k accuracy; ``top5`` uses ``k = min(5, num_classes)``.
        loss: mean cross-entropy.
        count: number of samples seen.
        per_class: accuracy per class index, ``None`` for a class without samples.
        agreement: fraction of samples where the model's argmax equals the reference's (``None`` without one).
        num_classes: the number of classes used.
    """

    top1: float
    top5: float
    loss: float
    count: int
    per_class: list[float | None] = field(default_factory=list)
    agreement: float | None = None
    num_classes: int = 0

    def summary(self) -> dict[str, Any]:
        """Flat JSON-friendly dict: ``top1``, ``top5``, ``loss``, ``n`` and ``agreement`` when measured."""
        out: dict[str, Any] = {"top1": round(self.top1, 6), "top5": round(self.top5, 6),
                               "loss": round(self.loss, 6), "n": self.count}
        if self.agreement is not None:
            out["agreement"] = round(self.agreement, 6)
        return out


class _Tally:
    """Running sums over batches (kept on CPU as Python numbers / small tensors)."""

    def __init__(self, num_classes: int | None) -> None:
        self.num_classes = num_classes
        self.n = self.top1 = self.topk = self.agree = 0
        self.loss = 0.0
        self.hits: torch.Tensor | None = None
        self.seen: torch.Tensor | None = None

    def add(self, logits: torch.Tensor, labels: torch.Tensor, ref_logits: torch.Tensor | None) -> None:
        if logits.dim() != 2:
            raise CompressError(f"evaluate: the model must return logits of shape (B, classes), got "
                                f"{tuple(logits.shape)}")
        classes = self.num_classes or logits.shape[1]
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
            raise CompressError(f"evaluate: label {int(labels.max())} is outside the model's "
                                f"{logits.shape[1]} outputs (labels must be 0..{logits.shape[1] - 1})")
        if self.hits is None:
            self.num_classes = classes
            self.hits, self.seen = torch.zeros(classes), torch.zeros(classes)
        k = min(5, classes, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        correct = topk[:, 0] == labels
        self.top1 += int(correct.sum())
        self.topk += int((topk == labels[:, None]).any(dim=1).sum())
        self.loss += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
        self.n += labels.numel()
        valid = labels < classes  # labels outside the declared classes still count in top-k and loss
        self.seen += torch.bincount(labels[valid].cpu(), minlength=classes)[:classes].float()
        self.hits += torch.bincount(labels[valid & correct].cpu(), minlength=classes)[:classes].float()
        if ref_logits is not None:
            self.agree += int((ref_logits.argmax(dim=1) == topk[:, 0]).sum())

    def result(self, has_reference: bool) -> Evaluation:
        if self.n == 0:
            raise CompressError("evaluate: the loader yielded no samples; expected at least one batch")
        assert self.hits is not None and self.seen is not None
        per_class = [float(h / s) if s > 0 else None for h, s in zip(self.hits, self.seen)]
        return Evaluation(top1=self.top1 / self.n, top5=self.topk / self.n, loss=self.loss / self.n,
                          count=self.n, per_class=per_class,
                          agreement=self.agree / self.n if has_reference else None,
                          num_classes=int(self.num_classes or 0))


def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise CompressError("evaluate: the loader must yield (images, labels) pairs, got "
                            f"{type(batch).__name__}")
    return batch[0], batch[1]


def evaluate(model: nn.Module, loader: Iterable, *, device: torch.device | str | None = None,
             reference: nn.Module | None = None, num_classes: int | None = None,
             verbose: bool = True) -> Evaluation:
    """Measure classification accuracy of ``model`` (and its agreement with ``reference``) on ``loader``.

    Both models run in eval mode under ``torch.inference_mode``; their train/eval flags are restored.

    Args:
        model: maps images ``(B, C, H, W)`` to logits ``(B, num_classes)``.
        loader: yields ``(images (B, C, H, W) float, labels (B,) int64)``.
        device: where the inputs go; default the model's device (the model is not moved). ``reference`` runs
            on its own device and its logits are brought to the model's.
        reference: e.g. the uncompressed baseline; ``agreement`` is the fraction of equal argmaxes.
        num_classes: classes for per-class accuracy and the top-5 cap; default the logits' width.
        verbose: show a tqdm progress bar.

    Returns:
        An :class:`Evaluation`.
    """
    device = torch.device(device) if device is not None else model_device(model)
    ref_device = model_device(reference) if reference is not None else None
    tally = _Tally(num_classes)
    with evaluating(model), _maybe_evaluating(reference), torch.inference_mode():
        for batch in tqdm(loader, desc="evaluate", leave=False, disable=not verbose):
            images, labels = _unpack(batch)
            logits = model(images.to(device, non_blocking=True))
            ref = reference(images.to(ref_device)).to(logits.device) if reference is not None else None
            tally.add(logits, labels.to(logits.device), ref)
    return tally.result(reference is not None)


def _maybe_evaluating(module: nn.Module | None) -> contextlib.AbstractContextManager:
    return evaluating(module) if module is not None else contextlib.nullcontext()
