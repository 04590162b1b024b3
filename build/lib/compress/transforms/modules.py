"""Small modules that rewrites insert and that pruning must understand.

They are plain ``nn.Module`` subclasses with constructor arguments stored as attributes of the same name, so
:mod:`compress.serialization` can rebuild them from a description.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["ChannelShuffle", "ChannelPermute"]


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle as a module (torch-pruning cannot trace the functional view/transpose form).

    Output channel ``j`` takes input channel ``(j % groups) * (C // groups) + j // groups``.

    Args:
        groups: number of groups; must divide the channel count ``C``.

    Shape:
        input ``(B, C, H, W)`` -> output ``(B, C, H, W)``.
    """

    def __init__(self, groups: int) -> None:
        super().__init__()
        if groups < 1:
            raise ValueError(f"groups must be >= 1, got {groups}")
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class ChannelPermute(nn.Module):
    """Reorders channels by a fixed index: ``out[:, j] = x[:, perm[j]]``.

    Used where a rewrite's channel permutation cannot be absorbed into a neighbouring layer's weights.

    Args:
        perm: a permutation of ``range(C)``.

    Shape:
        input ``(B, C, H, W)`` -> output ``(B, C, H, W)``.
    """

    def __init__(self, perm: list[int] | torch.Tensor) -> None:
        super().__init__()
        perm = torch.as_tensor(perm, dtype=torch.long)
        if sorted(perm.tolist()) != list(range(perm.numel())):
            raise ValueError("perm must be a permutation of range(C)")
        self.register_buffer("perm", perm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.perm)

    def extra_repr(self) -> str:
        return f"channels={self.perm.numel()}"
