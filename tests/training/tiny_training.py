"""Tiny learnable synthetic data and tiny nets shared by the training tests (and the torchrun script)."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["make_data", "loader", "TinyNet"]


def make_data(n: int = 256, *, classes: int = 4, size: int = 12, noise: float = 1.0, seed: int = 0
              ) -> TensorDataset:
    """``n`` images ``(1, size, size)``: a class-specific random pattern times a random gain, plus noise."""
    g = torch.Generator().manual_seed(1234)  # the class patterns are fixed; ``seed`` only draws samples
    patterns = torch.randn(classes, 1, size, size, generator=g)
    g.manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    gain = 0.5 + torch.rand(n, 1, 1, 1, generator=g)
    images = gain * patterns[labels] + noise * torch.randn(n, 1, size, size, generator=g)
    return TensorDataset(images, labels)


def loader(data: TensorDataset, *, batch_size: int = 32, shuffle: bool = True, seed: int = 0) -> DataLoader:
    """A DataLoader built like the project's: an explicit generator so fit can fix the order per epoch."""
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(seed))


class TinyNet(nn.Module):
    """Two convs (optionally with BatchNorm and dropout) and a linear head: ``(B, 1, H, W) -> (B, classes)``."""

    def __init__(self, width: int = 8, *, classes: int = 4, bn: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=not bn)
        self.bn1 = norm(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, stride=2, bias=not bn)
        self.bn2 = norm(2 * width)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(self.drop(x.mean((2, 3))))
