"""Dense KxK conv -> depthwise KxK (channel multiplier T) + pointwise 1x1, by per-input-channel SVD.

Network decoupling (Guo et al., 2018): the dense conv is ``y = sum_c W[:, c] * x_c``. For each input channel
``c`` the slice ``W[:, c]`` reshaped to ``(N, K*K)`` has an SVD ``U S V^T``; keeping its top ``T`` terms gives
``T`` depthwise kernels ``sqrt(s_t) v_t`` (reshaped ``K x K``) applied to ``x_c`` and pointwise weights
``sqrt(s_t) u_t`` mixing them into the ``N`` outputs. This is the best rank-``T`` approximation of every slice, so
the relative weight error is ``sqrt(sum of dropped s**2) / ||W||``; ``T = K*K`` (or ``T >= min(N, K*K)``) is
exact.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from ..config import check
from ..errors import CompressError
from .decompose import smallest_rank, svd_factors, tail_errors
from .registry import RewriteConfig, apply_config, conv_problem, register_handler

__all__ = ["SeparableConfig", "to_separable", "separable_errors", "separable_effective_weight"]


@dataclasses.dataclass(frozen=True)
class SeparableConfig(RewriteConfig):
    """A depthwise-separable rewrite of one conv.

    Attributes:
        T: depthwise channel multiplier, ``1 <= T <= kh*kw``.
    """

    kind = "separable"
    options = ("T", "max_error")

    T: int = 1

    def validate(self) -> None:
        check(isinstance(self.T, int) and self.T >= 1, "T", "an integer >= 1", self.T)

    @classmethod
    def eligibility(cls, conv: nn.Conv2d) -> str | None:
        reason = conv_problem(conv)
        if reason is None and conv.groups != 1:
            reason = f"not a dense conv (groups={conv.groups})"
        if reason is None and conv.kernel_size == (1, 1):
            reason = "1x1 kernel (a depthwise 1x1 only scales channels)"
        return reason

    def check_layer(self, conv: nn.Conv2d) -> None:
        super().check_layer(conv)
        k2 = conv.kernel_size[0] * conv.kernel_size[1]
        if self.T > k2:
            raise CompressError(f"separable rewrite: T={self.T} exceeds the kernel's {k2} taps")

    @classmethod
    def check_options(cls, T: int | None = None, max_error: float | None = None) -> None:
        if T is not None and max_error is not None:
            raise CompressError("separable rewrite: give T or max_error, not both")
        if max_error is not None and not 0.0 <= max_error < 1.0:
            raise CompressError(f"separable rewrite: max_error must be in [0, 1), got {max_error}")

    @classmethod
    def plan(cls, conv: nn.Conv2d, *, name: str = "", analysis: Any = None, T: int | None = None,
             max_error: float | None = None) -> "SeparableConfig":
        """``T`` as given, or the smallest ``T`` whose relative weight error is at most ``max_error``."""
        cls.check_options(T=T, max_error=max_error)
        if max_error is not None:
            T = smallest_rank(separable_errors(conv), max_error)
        return cls(T=1 if T is None else T)

    def describe(self, conv: nn.Conv2d) -> dict[str, Any]:
        return {"T": self.T}

    def effective_weight(self, conv: nn.Conv2d, new: nn.Module) -> torch.Tensor:
        return separable_effective_weight(new)


def _slices(conv: nn.Conv2d) -> torch.Tensor:
    """``(M, N, kh*kw)``: the dense weight split by input channel."""
    w = conv.weight.detach()
    return w.permute(1, 0, 2, 3).reshape(w.shape[1], w.shape[0], -1)


def separable_errors(conv: nn.Conv2d) -> torch.Tensor:
    """Relative weight error for every multiplier: ``(kh*kw + 1,)`` float64, entry ``T`` for multiplier ``T``."""
    s = torch.linalg.svdvals(_slices(conv).double())  # (M, min(N, K*K))
    k2 = conv.kernel_size[0] * conv.kernel_size[1]
    errors = tail_errors(s)
    return torch.cat([errors, errors.new_zeros(k2 + 1 - errors.numel())])  # T beyond the rank: exact


def to_separable(conv: nn.Conv2d, T: int) -> nn.Module:
    """Replace a dense KxK conv by depthwise KxK (multiplier ``T``) + pointwise 1x1, initialised by SVD.

    Args:
        conv: dense ``nn.Conv2d(M, N, (kh, kw))`` with ``groups == 1``.
        T: channel multiplier, ``1..kh*kw``; ``kh*kw`` is exact.

    Returns:
        ``nn.Sequential`` with ``depthwise`` = ``Conv2d(M, M*T, (kh, kw), groups=M)`` (conv's stride, padding,
        dilation; no bias) and ``pointwise`` = ``Conv2d(M*T, N, 1)`` carrying the bias. Input ``(B, M, H, W)``
        -> output ``(B, N, H', W')`` like ``conv``.
    """
    return apply_config(conv, SeparableConfig(T=T))


@register_handler(SeparableConfig)
def _separable(conv: nn.Conv2d, config: SeparableConfig) -> nn.Module:
    t = config.T
    m, n = conv.in_channels, conv.out_channels
    left, right = svd_factors(_slices(conv), t)  # (M, N, T), (M, T, K*K)
    kw = dict(device=conv.weight.device, dtype=conv.weight.dtype)
    depthwise = nn.Conv2d(m, m * t, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                          dilation=conv.dilation, groups=m, bias=False, **kw)
    pointwise = nn.Conv2d(m * t, n, 1, bias=conv.bias is not None, **kw)
    with torch.no_grad():
        # depthwise output channel c*T + t reads input channel c (groups=M) and holds term t of slice c
        depthwise.weight.copy_(right.reshape(m * t, 1, *conv.kernel_size))
        pointwise.weight.copy_(left.permute(1, 0, 2).reshape(n, m * t, 1, 1))
        if conv.bias is not None:
            pointwise.bias.copy_(conv.bias.detach())
    return nn.Sequential(OrderedDict([("depthwise", depthwise), ("pointwise", pointwise)]))


def separable_effective_weight(module: nn.Sequential) -> torch.Tensor:
    """The dense weight ``(N, M, kh, kw)`` computed by a :func:`to_separable` result."""
    dw, pw = module.depthwise, module.pointwise
    m, t = dw.in_channels, dw.out_channels // dw.in_channels
    d = dw.weight.detach().reshape(m, t, -1)  # (M, T, K*K)
    p = pw.weight.detach().reshape(pw.out_channels, m, t)  # (N, M, T)
    return torch.einsum("nmt,mtk->nmk", p, d).reshape(pw.out_channels, m, *dw.kernel_size)
