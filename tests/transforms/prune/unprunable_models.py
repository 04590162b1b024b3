"""Models with a channel group torch-pruning mishandles (imported by the guard tests and, as a user's
``module:factory``, by a recipe test: ``unprunable_models:MixNet``)."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["FixedSplitConv", "MixNet"]


class FixedSplitConv(nn.Module):
    """Like timm's MixedConv2d: splits its input by sizes it stores itself (tp does not know to update them)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.splits = [channels // 2, channels - channels // 2]
        self.convs = nn.ModuleList(nn.Conv2d(c, c, k, padding=k // 2, groups=c) for c, k in zip(self.splits, (3, 5)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([conv(part) for conv, part in zip(self.convs, torch.split(x, self.splits, dim=1))], dim=1)


class MixNet(nn.Module):
    """stem (3 -> 16) -> mixed depthwise (fixed split) -> pw (16 -> 24) -> pw (24 -> 24) -> pool -> Linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.mix = FixedSplitConv(16)
        self.pw1, self.bn1 = nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24)
        self.pw2, self.bn2 = nn.Conv2d(24, 24, 1), nn.BatchNorm2d(24)
        self.head = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mix(torch.relu(self.bn0(self.stem(x))))
        x = torch.relu(self.bn2(self.pw2(torch.relu(self.bn1(self.pw1(x))))))
        return self.head(x.mean(dim=(2, 3)))

