"""Tiny models shared by the planning tests (a uniquely named module: several test dirs have a conftest)."""
from __future__ import annotations

import torch
from torch import nn


def tiny_net(seed: int = 0) -> nn.Sequential:
    """Four convs (16-32 channels) for 16 px RGB inputs; ``(B, 3, 16, 16) -> (B, 10)``."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
