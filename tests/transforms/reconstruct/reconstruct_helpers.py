"""Tiny nets and seeded batches for the reconstruction tests."""
from __future__ import annotations

import torch
from torch import nn

from compress.training.calibrate import calibrate_bn
from compress.transforms.rewrite.decompose import relative_error

__all__ = ["ConvNet", "batches", "logit_error", "calibrated"]


class ConvNet(nn.Module):
    """Dense, strided, grouped and depthwise convs, BatchNorms and a linear head.

    Shape:
        input ``(B, 3, 16, 16)`` -> logits ``(B, 5)``.
    """

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width)
        self.grouped = nn.Conv2d(width, width, 3, padding=1, groups=2)
        self.depthwise = nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False)
        self.fc = nn.Linear(width, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.depthwise(torch.relu(self.grouped(x))))
        return self.fc(x.mean(dim=(2, 3)))


def batches(n: int, *, seed: int, batch: int = 16, shape: tuple[int, ...] = (3, 16, 16),
            dtype: torch.dtype = torch.float32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` seeded ``(images (batch, *shape), labels (batch,))`` pairs."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn((batch, *shape), generator=gen, dtype=dtype), torch.zeros(batch, dtype=torch.long))
            for _ in range(n)]


def calibrated(model: nn.Module, calib: list) -> nn.Module:
    """``model`` with BatchNorm statistics of ``calib`` (non-trivial running means and variances), in eval mode."""
    calibrate_bn(model, calib)
    return model.eval()


@torch.no_grad()
def logit_error(model: nn.Module, reference: nn.Module, data: list) -> float:
    """Relative L2 error of ``model``'s logits vs ``reference``'s over all of ``data`` (eval mode)."""
    model.eval(), reference.eval()
    x = torch.cat([b[0] for b in data])
    return relative_error(model(x), reference(x))
