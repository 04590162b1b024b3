"""The candidate forms of one conv: aligned pruned widths and rewrites (grouped, separable, shuffle, bottleneck).

Widths are multiples of an alignment (8 on CPU, 16/32 on CUDA) because kernels are tiled: a width off the tile
size often runs no faster than the next multiple up, and sometimes slower. Which widths and forms actually pay
off on a device is then *measured* (:mod:`compress.planning.table`), not assumed.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import CompressError
from .shapes import ConvShape

__all__ = ["FORM_KINDS", "REWRITE_KINDS", "BLOCK_KINDS", "Form", "aligned_widths", "default_align", "rewrite_forms",
           "check_forms", "MIN_REWRITE_CHANNELS"]

REWRITE_KINDS = ("grouped", "separable", "shuffle", "bottleneck")
BLOCK_KINDS = ("drop",)  # whole residual blocks replaced by the identity (compress.planning.blocks)
FORM_KINDS = ("prune",) + REWRITE_KINDS + BLOCK_KINDS

_VALUES: dict[str, tuple] = {"grouped": (2, 4, 8), "separable": (1, 2, 4), "shuffle": (2, 4, 8),
                             "bottleneck": (0.25, 0.5)}

# Rewriting very narrow convs saves next to nothing and costs a large share of their (few) channels.
MIN_REWRITE_CHANNELS = 16


def check_forms(forms: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Validate a ``forms`` option: a non-empty subset of :data:`FORM_KINDS`."""
    forms = tuple(forms)
    bad = [f for f in forms if f not in FORM_KINDS]
    if not forms or bad:
        raise CompressError(f"plan forms: expected a non-empty subset of {', '.join(FORM_KINDS)}, got {list(forms)}")
    return forms


@dataclass(frozen=True)
class Form:
    """One rewrite of a dense conv.

    Attributes:
        kind: ``"grouped"`` (``value`` = groups), ``"separable"`` (depthwise multiplier ``T``), ``"shuffle"``
            (groups; 1x1 convs only) or ``"bottleneck"`` (rank as a fraction of the input channels).
        value: the kind's parameter.
    """

    kind: str
    value: int | float

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.value}"

    @classmethod
    def parse(cls, key: str) -> "Form":
        kind, _, value = key.partition(":")
        return cls(kind, float(value) if kind == "bottleneck" else int(value))

    def rank(self, in_channels: int) -> int:
        """Bottleneck width for ``in_channels`` inputs."""
        return max(1, round(self.value * in_channels))

    def params(self, in_channels: int) -> dict[str, Any]:
        """Keyword options for :func:`compress.transforms.rewrite.apply.rewrite` at ``in_channels`` inputs."""
        if self.kind == "bottleneck":
            return {"rank": self.rank(in_channels)}
        return {"T": self.value} if self.kind == "separable" else {"groups": self.value}

    def fits(self, shape: ConvShape) -> bool:
        """Whether this rewrite is defined for a dense conv of ``shape`` (divisibility, kernel size)."""
        if shape.groups != 1 or not isinstance(shape.padding, tuple):
            return False
        n, m, k2 = shape.out_channels, shape.in_channels, shape.kernel[0] * shape.kernel[1]
        if self.kind == "grouped":
            return n % self.value == 0 and m % self.value == 0
        if self.kind == "separable":
            return k2 > 1 and self.value <= k2
        if self.kind == "shuffle":
            return k2 == 1 and n % self.value == 0 and m % self.value == 0
        return self.rank(m) < m  # bottleneck: a rank of M would save nothing

    def macs(self, shape: ConvShape) -> int:
        """Per-sample multiply-accumulates of the rewritten conv (bias adds not counted)."""
        n, m, k2 = shape.out_channels, shape.in_channels, shape.kernel[0] * shape.kernel[1]
        hw_out, hw_in = shape.out_positions(), shape.in_positions()
        if self.kind == "grouped":
            return hw_out * k2 * m * n // self.value
        if self.kind == "separable":
            return hw_out * m * self.value * (k2 + n)
        if self.kind == "shuffle":
            return hw_out * n * (m + n) // self.value
        r = self.rank(m)
        return hw_in * m * r + hw_out * k2 * r * n

    def param_count(self, shape: ConvShape) -> int:
        n, m, k2 = shape.out_channels, shape.in_channels, shape.kernel[0] * shape.kernel[1]
        bias = n if shape.bias else 0
        if self.kind == "grouped":
            return k2 * m * n // self.value + bias
        if self.kind == "separable":
            return m * self.value * (k2 + n) + bias
        if self.kind == "shuffle":
            return n * (m + n) // self.value + bias
        r = self.rank(m)
        return m * r + k2 * r * n + bias

    def module(self, shape: ConvShape, *, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> nn.Module:
        """The replacement the transforms build for a conv of ``shape`` (random weights, for timing).

        Separable, shuffle and bottleneck forms come from :mod:`compress.transforms` itself. A grouped form is
        built as :func:`~compress.transforms.to_grouped` lays it out, channel permutes included (random ones):
        they are folded into neighbours only where that is exact, which fails next to another grouped conv, so
        timing them is the honest default (a fold that succeeds only makes the plan faster than predicted).
        """
        if self.kind == "grouped":
            return _grouped(shape, self.value, device=device, dtype=dtype)
        from ..transforms import to_bottleneck, to_separable, to_shuffled

        conv = shape.build(device=device)  # float32: the transforms' SVD initialisation needs a float weight
        if self.kind == "separable":
            new = to_separable(conv, self.value)
        elif self.kind == "shuffle":
            new = to_shuffled(conv, self.value)
        else:
            new = to_bottleneck(conv, self.rank(shape.in_channels))
        return new.to(dtype=dtype)


def _grouped(shape: ConvShape, groups: int, *, device: torch.device | str, dtype: torch.dtype) -> nn.Sequential:
    """``permute_in -> grouped conv -> permute_out``, the layout of :func:`compress.transforms.to_grouped`."""
    from ..transforms.modules import ChannelPermute

    conv = nn.Conv2d(shape.in_channels, shape.out_channels, shape.kernel, stride=shape.stride, padding=shape.padding,
                     dilation=shape.dilation, groups=groups, bias=shape.bias, device=device, dtype=dtype)
    return nn.Sequential(OrderedDict([("permute_in", ChannelPermute(torch.randperm(shape.in_channels))),
                                      ("conv", conv),
                                      ("permute_out", ChannelPermute(torch.randperm(shape.out_channels)))])).to(device)


def aligned_widths(channels: int, *, align: int, min_keep: float = 0.25, max_widths: int = 8) -> list[int]:
    """Candidate pruned widths of a ``channels``-wide group, largest first (``channels`` itself excluded).

    Widths are multiples of ``align`` in ``[min_keep * channels, channels)``. When there are more than
    ``max_widths`` of them the step grows to a multiple of ``align`` so that at most ``max_widths`` remain
    (every candidate is still aligned and measured).

    Args:
        channels: current width.
        align: alignment (e.g. 8 on CPU, 32 for CUDA bf16).
        min_keep: smallest fraction of ``channels`` to keep.
        max_widths: most candidates returned.
    """
    if align < 1 or max_widths < 1 or not 0.0 < min_keep <= 1.0:
        raise CompressError(f"aligned_widths: need align >= 1, max_widths >= 1, 0 < min_keep <= 1; got "
                            f"align={align}, max_widths={max_widths}, min_keep={min_keep}")
    low = max(align, math.ceil(min_keep * channels / align) * align)
    top = (channels - 1) // align * align
    if top < low:
        return []
    count = (top - low) // align + 1
    step = align * math.ceil(count / max_widths)
    return list(range(top, low - 1, -step))[:max_widths]


def default_align(device: str, dtype: torch.dtype) -> int:
    """Channel alignment the planner uses by default: 8 on CPU; on CUDA 32 for half precision, else 16.

    Tensor-core kernels tile channels by 8 (fp16/bf16 MMA) to 32 (cuDNN's implicit-GEMM tiles); CPU kernels
    vectorise over 8 fp32 lanes (AVX2).
    """
    if torch.device(device).type == "cuda":
        return 32 if dtype in (torch.float16, torch.bfloat16) else 16
    return 8


def rewrite_forms(shape: ConvShape, kinds: tuple[str, ...]) -> list[Form]:
    """The rewrites among ``kinds`` that fit a conv of ``shape`` (none for narrow or non-dense convs)."""
    if shape.groups != 1 or min(shape.in_channels, shape.out_channels) < MIN_REWRITE_CHANNELS:
        return []
    forms = [Form(kind, value) for kind in REWRITE_KINDS if kind in kinds for value in _VALUES[kind]]
    return [f for f in forms if f.fits(shape)]
