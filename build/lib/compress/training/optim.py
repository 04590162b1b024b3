"""Optimizer and per-step learning-rate schedule built from a :class:`TrainConfig`."""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from .config import TrainConfig

__all__ = ["build_optimizer", "build_scheduler", "LrFactor"]


def build_optimizer(params: Iterable[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over ``params`` at the peak learning rate."""
    params = [p for p in params if p.requires_grad]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                           nesterov=config.nesterov and config.momentum > 0)


class LrFactor:
    """Multiplier of the peak lr after ``step`` steps: linear warm-up, then cosine to zero or constant.

    A class rather than a closure so that the scheduler's ``state_dict`` stays plain data.
    """

    def __init__(self, total_steps: int, warmup_steps: int, cosine: bool) -> None:
        self.total, self.warmup, self.cosine = total_steps, warmup_steps, cosine

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if not self.cosine:
            return 1.0
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, *, total_steps: int,
                    steps_per_epoch: int) -> LambdaLR:
    """A per-step :class:`LambdaLR` (call ``step()`` after every optimizer step)."""
    warmup = min(total_steps, round(config.warmup_epochs * steps_per_epoch))
    return LambdaLR(optimizer, LrFactor(total_steps, warmup, config.schedule == "cosine"))
