"""Top-1 accuracy of a model on a loader (for validation during training; reports use compress.measurement)."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..modes import evaluating

__all__ = ["top1_accuracy", "autocast"]


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast on CUDA when ``enabled``; a disabled context elsewhere (CPU trains in float32)."""
    on = enabled and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=on)


@torch.no_grad()
def top1_accuracy(model: nn.Module, loader: DataLoader, *, device: torch.device, amp: bool = False,
                  channels_last: bool = False) -> float:
    """Fraction of samples whose argmax logit equals the label; the model is left in its previous mode.

    Args:
        model: maps ``(B, C, H, W)`` float32 images to ``(B, K)`` logits.
        loader: yields ``(images, labels)`` with labels ``(B,)`` int64.
    """
    correct = total = 0
    with evaluating(model):
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if channels_last and device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                logits = model(images)
            correct += int((logits.argmax(1) == labels).sum())
            total += labels.numel()
    return correct / max(total, 1)
