"""Dense KxK conv M->N -> 1x1 conv M->r then KxK conv r->N, by SVD of the input-channel unfolding.

Tucker-2 restricted to the input mode: unfold the weight along input channels, ``W_(in) = reshape(W, M x N*K*K)``
``= U S V^T``. The first layer projects the input onto the top ``r`` left singular vectors (weight ``U_r^T``);
the second is ``W`` contracted with them (``W2[n, j] = sum_m W[n, m] U[m, j]``). Together they compute
``W x_in (U_r U_r^T)``, the best rank-``r`` approximation of ``W_(in)``, so the relative weight error is
``sqrt(sum of dropped s**2) / ||W||`` and ``r = M`` is exact.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from ....config import check
from ....errors import CompressError
from ..decompose import smallest_rank, tail_errors
from ..registry import KindOptions, RewriteConfig, apply_config, conv_problem, register_handler

__all__ = ["BottleneckConfig", "BottleneckOptions", "to_bottleneck", "bottleneck_errors", "bottleneck_effective_weight"]


@dataclasses.dataclass(frozen=True)
class BottleneckOptions(KindOptions):
    """Options of the bottleneck rewrite (give at most one; none: ``rank_ratio = 0.5``).

    Attributes:
        rank: projection width, an integer >= 1.
        rank_ratio: projection width as a fraction of the input channels, in ``(0, 1]``.
        max_error: per-layer relative weight error budget in ``[0, 1)`` choosing the smallest rank.
    """

    rank: int | None = None
    rank_ratio: float | None = None
    max_error: float | None = None

    def validate(self) -> None:
        self.exclusive("rank", "rank_ratio", "max_error")
        check(self.rank is None or (isinstance(self.rank, int) and self.rank >= 1), "rank", "an integer >= 1",
              self.rank)
        check(self.rank_ratio is None or 0.0 < self.rank_ratio <= 1.0, "rank_ratio", "a number in (0, 1]",
              self.rank_ratio)
        check(self.max_error is None or 0.0 <= self.max_error < 1.0, "max_error", "a number in [0, 1)",
              self.max_error)


@dataclasses.dataclass(frozen=True)
class BottleneckConfig(RewriteConfig):
    """A bottleneck rewrite of one conv.

    Attributes:
        rank: width ``r`` of the 1x1 projection, ``1 <= r <= in_channels``.
    """

    kind = "bottleneck"
    Options = BottleneckOptions
    planner_values = (0.25, 0.5)
    example_options = {"rank_ratio": 0.5}

    rank: int = 1

    def validate(self) -> None:
        check(isinstance(self.rank, int) and self.rank >= 1, "rank", "an integer >= 1", self.rank)

    @classmethod
    def eligibility(cls, conv: nn.Conv2d) -> str | None:
        return conv_problem(conv, dense=True)

    def check_layer(self, conv: nn.Conv2d) -> None:
        super().check_layer(conv)
        if self.rank > conv.in_channels:
            raise CompressError(f"bottleneck rewrite: rank={self.rank} exceeds in_channels={conv.in_channels}")

    @classmethod
    def plan(cls, conv: nn.Conv2d, *, name: str = "", analysis: Any = None, rank: int | None = None,
             rank_ratio: float | None = None, max_error: float | None = None) -> "BottleneckConfig":
        """``rank`` as given, ``round(rank_ratio * M)`` (at least 1), or the smallest rank within ``max_error``.

        With none given the ratio defaults to 0.5.
        """
        cls.check_options(rank=rank, rank_ratio=rank_ratio, max_error=max_error)
        if max_error is not None:
            rank = smallest_rank(bottleneck_errors(conv), max_error)
        elif rank is None:
            rank = max(1, round((0.5 if rank_ratio is None else rank_ratio) * conv.in_channels))
        return cls(rank=rank)

    @classmethod
    def form_options(cls, value: int | float, in_channels: int) -> dict[str, Any]:
        """The planner's value is the rank as a fraction of the input channels."""
        return {"rank": max(1, round(value * in_channels))}

    @classmethod
    def form_fits(cls, shape: Any, value: int | float) -> bool:
        return cls.form_options(value, shape.in_channels)["rank"] < shape.in_channels  # rank M saves nothing

    @classmethod
    def form_macs(cls, shape: Any, value: int | float) -> int:
        r, k2 = cls.form_options(value, shape.in_channels)["rank"], shape.kernel[0] * shape.kernel[1]
        return shape.in_positions() * shape.in_channels * r + shape.out_positions() * k2 * r * shape.out_channels

    @classmethod
    def form_params(cls, shape: Any, value: int | float) -> int:
        r, k2 = cls.form_options(value, shape.in_channels)["rank"], shape.kernel[0] * shape.kernel[1]
        return shape.in_channels * r + k2 * r * shape.out_channels + (shape.out_channels if shape.bias else 0)

    @classmethod
    def form_error2(cls, conv: nn.Conv2d, value: int | float, *, moments: torch.Tensor | None = None) -> float:
        return float(bottleneck_errors(conv)[cls.form_options(value, conv.in_channels)["rank"]]) ** 2

    def effective_weight(self, conv: nn.Conv2d, new: nn.Module) -> torch.Tensor:
        return bottleneck_effective_weight(new)


def _unfolding(conv: nn.Conv2d) -> torch.Tensor:
    """``(M, N*kh*kw)``: the weight unfolded along input channels, float64."""
    w = conv.weight.detach().double()
    return w.transpose(0, 1).reshape(w.shape[1], -1)


def bottleneck_errors(conv: nn.Conv2d) -> torch.Tensor:
    """Relative weight error for every rank: ``(M + 1,)`` float64, entry ``r`` for rank ``r``."""
    errors = tail_errors(torch.linalg.svdvals(_unfolding(conv)))
    return torch.cat([errors, errors.new_zeros(conv.in_channels + 1 - errors.numel())])


def to_bottleneck(conv: nn.Conv2d, rank: int) -> nn.Module:
    """Replace a dense conv M->N by a 1x1 projection M->rank and a KxK conv rank->N.

    Args:
        conv: dense ``nn.Conv2d(M, N, (kh, kw))``, ``groups == 1``.
        rank: ``r`` in ``1..M``; ``M`` is exact.

    Returns:
        ``nn.Sequential`` with ``reduce`` = ``Conv2d(M, r, 1, bias=False)`` and ``conv`` = ``Conv2d(r, N, (kh,
        kw))`` with the dense conv's stride, padding, dilation and bias (for a 1x1 conv, stride and padding go
        on ``reduce``). Input ``(B, M, H, W)`` -> output ``(B, N, H', W')`` like ``conv``.
    """
    return apply_config(conv, BottleneckConfig(rank=rank))


@register_handler(BottleneckConfig)
def _bottleneck(conv: nn.Conv2d, config: BottleneckConfig) -> nn.Module:
    r, m, n = config.rank, conv.in_channels, conv.out_channels
    unfolded = _unfolding(conv)
    # r may exceed N*kh*kw (a wide 1x1): then the full U supplies an orthonormal complement (still exact)
    u = torch.linalg.svd(unfolded, full_matrices=r > min(unfolded.shape))[0][:, :r]  # (M, r)
    kw = dict(device=conv.weight.device, dtype=conv.weight.dtype)
    # a 1x1 commutes with subsampling and zero padding: for a 1x1 conv both move to the projection, so it
    # runs at the output resolution
    pointwise = conv.kernel_size == (1, 1)
    first = dict(stride=conv.stride, padding=conv.padding) if pointwise else {}
    second = {} if pointwise else dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation)
    reduce = nn.Conv2d(m, r, 1, bias=False, **first, **kw)
    core = nn.Conv2d(r, n, conv.kernel_size, bias=conv.bias is not None, **second, **kw)
    with torch.no_grad():
        reduce.weight.copy_(u.T.reshape(r, m, 1, 1))
        core.weight.copy_(torch.einsum("nmhw,mr->nrhw", conv.weight.detach().double(), u))
        if conv.bias is not None:
            core.bias.copy_(conv.bias.detach())
    return nn.Sequential(OrderedDict([("reduce", reduce), ("conv", core)]))


def bottleneck_effective_weight(module: nn.Sequential) -> torch.Tensor:
    """The dense weight ``(N, M, kh, kw)`` computed by a :func:`to_bottleneck` result."""
    p = module.reduce.weight.detach().flatten(1)  # (r, M)
    return torch.einsum("nrhw,rm->nmhw", module.conv.weight.detach(), p)
