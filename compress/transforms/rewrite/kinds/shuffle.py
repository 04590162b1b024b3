"""Dense conv -> ShuffleNet form: grouped 1x1 -> ChannelShuffle -> [depthwise KxK] -> grouped 1x1.

Structure. With ``g`` groups and hidden width ``B`` (``b = B/g`` per group), hidden channel ``h = a*b + k`` of
the first grouped 1x1 reads only input group ``a``; the shuffle moves it to position ``p = k*g + a``, which the
second grouped 1x1 reads in its group ``G = p // b``. So every hidden channel links exactly one (output group
``G``, input group ``a``) pair, and the block ``W[G, a]`` of the dense weight (``N/g x M/g`` for a 1x1, with a
``K*K`` kernel axis otherwise) is a sum of ``s_{G,a}`` rank-one terms, ``s_{G,a}`` being the number of hidden
channels linking the pair (``B/g**2`` each when ``g**2`` divides ``B``).

Initialisation. The blocks are independent, so each is fitted on its own:

* 1x1 (``y = G2 S G1 x``): truncated SVD of each block to ``s_{G,a}`` terms, the Frobenius-optimal choice for
  this structure. Exact whenever every block's rank is at most ``s_{G,a}``, e.g. when the dense weight was
  itself built as ``G2 S G1`` or is block-diagonal after the shuffle permutation.
* KxK (ShuffleNet unit with a depthwise KxK after the shuffle): each hidden channel is a rank-one term
  ``G2 column x depthwise kernel x G1 row``, so each block ``(N/g, M/g, K*K)`` gets a rank-``s_{G,a}`` CP
  decomposition (HOSVD start, ALS, :func:`compress.transforms.rewrite.decompose.cp_als`). This is a heavy compression
  (the dense ``N*M*K*K`` weights become ``B*(M/g + K*K + N/g)``); its relative weight error is reported per
  layer and is typically large for weights not trained for it, so plan on fine-tuning.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from ....config import check
from ....errors import CompressError
from ..decompose import cp_als, svd_factors
from ...modules import ChannelShuffle
from ..registry import KindOptions, RewriteConfig, apply_config, conv_problem, register_handler

__all__ = ["ShuffleConfig", "ShuffleOptions", "to_shuffled", "shuffle_effective_weight"]


@dataclasses.dataclass(frozen=True)
class ShuffleOptions(KindOptions):
    """Options of the shuffle rewrite.

    Attributes:
        groups: number of groups of the two grouped 1x1s, an integer >= 2 (required).
        width: hidden channels between them (default: the conv's output channels).
    """

    groups: int | None = None
    width: int | None = None

    def validate(self) -> None:
        check(isinstance(self.groups, int) and not isinstance(self.groups, bool) and self.groups >= 2, "groups",
              "an integer >= 2", self.groups)
        check(self.width is None or (isinstance(self.width, int) and self.width >= 1), "width", "an integer >= 1",
              self.width)


@dataclasses.dataclass(frozen=True)
class ShuffleConfig(RewriteConfig):
    """A ShuffleNet rewrite of one conv.

    Attributes:
        groups: ``g >= 1`` dividing in_channels, out_channels and the width.
        width: hidden channels ``B`` between the grouped 1x1s; ``None``: the conv's ``out_channels``.
    """

    kind = "shuffle"
    Options = ShuffleOptions
    planner_values = (2, 4, 8)
    example_options = {"groups": 4}

    groups: int = 2
    width: int | None = None

    def validate(self) -> None:
        check(isinstance(self.groups, int) and self.groups >= 1, "groups", "an integer >= 1", self.groups)
        check(self.width is None or (isinstance(self.width, int) and self.width >= 1), "width",
              "an integer >= 1 or null", self.width)

    @classmethod
    def eligibility(cls, conv: nn.Conv2d) -> str | None:
        return conv_problem(conv, dense=True)

    def check_layer(self, conv: nn.Conv2d) -> None:
        super().check_layer(conv)
        width = self.hidden(conv)
        for what, size in (("in_channels", conv.in_channels), ("out_channels", conv.out_channels),
                           ("width", width)):
            if size % self.groups:
                raise CompressError(f"shuffle rewrite: groups={self.groups} must divide {what}={size}")

    @classmethod
    def form_options(cls, value: int | float, in_channels: int) -> dict[str, Any]:
        return {"groups": int(value)}

    @classmethod
    def form_fits(cls, shape: Any, value: int | float) -> bool:
        """The planner offers the pointwise form only (1x1 convs)."""
        return (shape.kernel == (1, 1) and shape.out_channels % value == 0
                and shape.in_channels % value == 0)

    @classmethod
    def form_macs(cls, shape: Any, value: int | float) -> int:
        return shape.out_positions() * cls.form_params(shape, value, bias=False)

    @classmethod
    def form_params(cls, shape: Any, value: int | float, *, bias: bool = True) -> int:
        n, m = shape.out_channels, shape.in_channels
        return n * (m + n) // int(value) + (n if bias and shape.bias else 0)

    @classmethod
    def plan(cls, conv: nn.Conv2d, *, name: str = "", analysis: Any = None, groups: int | None = None,
             width: int | None = None) -> "ShuffleConfig":
        cls.check_options(groups=groups, width=width)
        return cls(groups=groups, width=width)

    def hidden(self, conv: nn.Conv2d) -> int:
        """The hidden width ``B`` for ``conv``."""
        return conv.out_channels if self.width is None else self.width

    def effective_weight(self, conv: nn.Conv2d, new: nn.Module) -> torch.Tensor:
        return shuffle_effective_weight(new)

    def describe(self, conv: nn.Conv2d) -> dict[str, Any]:
        return {"groups": self.groups, "width": self.hidden(conv),
                "form": "pointwise" if conv.kernel_size == (1, 1) else "unit"}


def to_shuffled(conv: nn.Conv2d, groups: int, *, width: int | None = None) -> nn.Sequential:
    """Replace a dense conv by its ShuffleNet form, initialised from the dense weight.

    Args:
        conv: dense ``nn.Conv2d(M, N, (kh, kw))``, ``groups == 1``.
        groups: ``g`` dividing ``M``, ``N`` and the width.
        width: hidden channels ``B``; default ``N``.

    Returns:
        ``nn.Sequential`` with ``reduce`` = ``Conv2d(M, B, 1, groups=g)``, ``shuffle`` = ``ChannelShuffle(g)``,
        for a KxK conv ``depthwise`` = ``Conv2d(B, B, (kh, kw), groups=B)`` with the conv's stride, padding and
        dilation, and ``expand`` = ``Conv2d(B, N, 1, groups=g)`` carrying the bias (for a 1x1 conv the stride
        and padding go on ``reduce``). Input ``(B_, M, H, W)`` -> output like ``conv``.
    """
    return apply_config(conv, ShuffleConfig(groups=groups, width=width))


def _links(groups: int, width: int) -> dict[tuple[int, int], torch.Tensor]:
    """Hidden channels ``k`` (within input group ``a``) linking each (output group ``G``, input group ``a``)."""
    b = width // groups
    k = torch.arange(b)
    links = {}
    for a in range(groups):
        target = (k * groups + a) // b  # output group reading hidden channel a*b + k after the shuffle
        for grp in range(groups):
            links[(grp, a)] = k[target == grp]
    return links


def _balanced_cp(block: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CP factors of ``block (n, m, K*K)`` with equal column norms across the three factors."""
    a, b, c = cp_als(block, rank, iters=50, rtol=1e-3)  # stops at a plateau: random weights get there fast
    norms = torch.stack([a.norm(dim=0), b.norm(dim=0), c.norm(dim=0)])  # (3, r)
    scale = norms.prod(0).pow(1 / 3) / norms.clamp_min(1e-300)
    return a * scale[0], b * scale[1], c * scale[2]


@register_handler(ShuffleConfig)
def _shuffled(conv: nn.Conv2d, config: ShuffleConfig) -> nn.Sequential:
    g, width = config.groups, config.hidden(conv)
    m, n = conv.in_channels, conv.out_channels
    mg, ng, b = m // g, n // g, width // g
    pointwise = conv.kernel_size == (1, 1)
    w = conv.weight.detach().double().reshape(n, m, -1)  # (N, M, K*K)
    g1 = w.new_zeros(width, mg)  # reduce weight: row a*b + k
    g2 = w.new_zeros(n, b)  # expand weight: column p - G*b of output group G
    dw = w.new_ones(width, w.shape[2])  # depthwise kernels by shuffled position p
    for (grp, a), ks in _links(g, width).items():
        if ks.numel() == 0:
            continue
        ks = ks.to(w.device)
        block = w[grp * ng:(grp + 1) * ng, a * mg:(a + 1) * mg]
        if pointwise:
            left, right = svd_factors(block[..., 0], ks.numel())  # (ng, s), (s, mg)
            kernels = None
        else:
            left, right_t, kernels = _balanced_cp(block, ks.numel())
            right = right_t.T
        positions = ks * g + a
        g1[a * b + ks] = right
        g2[grp * ng:(grp + 1) * ng, positions - grp * b] = left
        if kernels is not None:
            dw[positions] = kernels.T
    return _assemble(conv, config, g1, g2, None if pointwise else dw)


def _assemble(conv: nn.Conv2d, config: ShuffleConfig, g1: torch.Tensor, g2: torch.Tensor,
              dw: torch.Tensor | None) -> nn.Sequential:
    g, width = config.groups, config.hidden(conv)
    m, n = conv.in_channels, conv.out_channels
    kw = dict(device=conv.weight.device, dtype=conv.weight.dtype)
    # a 1x1 commutes with subsampling and zero padding, so a pointwise conv's stride/padding go first
    first = dict(stride=conv.stride, padding=conv.padding) if dw is None else {}
    reduce = nn.Conv2d(m, width, 1, groups=g, bias=False, **first, **kw)
    expand = nn.Conv2d(width, n, 1, groups=g, bias=conv.bias is not None, **kw)
    parts: list[tuple[str, nn.Module]] = [("reduce", reduce), ("shuffle", ChannelShuffle(g))]
    with torch.no_grad():
        reduce.weight.copy_(g1.reshape(width, m // g, 1, 1))
        expand.weight.copy_(g2.reshape(n, width // g, 1, 1))
        if conv.bias is not None:
            expand.bias.copy_(conv.bias.detach())
        if dw is not None:
            depthwise = nn.Conv2d(width, width, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                                  dilation=conv.dilation, groups=width, bias=False, **kw)
            depthwise.weight.copy_(dw.reshape(width, 1, *conv.kernel_size))
            parts.append(("depthwise", depthwise))
    parts.append(("expand", expand))
    return nn.Sequential(OrderedDict(parts))


def shuffle_effective_weight(module: nn.Sequential) -> torch.Tensor:
    """The dense weight ``(N, M, kh, kw)`` computed by a :func:`to_shuffled` result."""
    reduce, expand, g = module.reduce, module.expand, module.shuffle.groups
    width, m, n = reduce.out_channels, reduce.in_channels, expand.out_channels
    g1 = torch.block_diag(*reduce.weight.detach().flatten(1).reshape(g, width // g, m // g))  # (B, M)
    g2 = torch.block_diag(*expand.weight.detach().flatten(1).reshape(g, n // g, width // g))  # (N, B)
    p = torch.arange(width)
    hidden = (p % g) * (width // g) + p // g  # hidden channel at shuffled position p
    dw = module.depthwise if hasattr(module, "depthwise") else None
    kernels = dw.weight.detach().flatten(1) if dw is not None else g1.new_ones(width, 1)  # (B, K*K)
    ksize = dw.kernel_size if dw is not None else (1, 1)
    dense = torch.einsum("np,pk,pm->nmk", g2, kernels, g1[hidden.to(g1.device)])
    return dense.reshape(n, m, *ksize)
