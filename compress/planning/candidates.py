"""The candidate forms of one conv: aligned pruned widths and rewrites (grouped, separable, shuffle, bottleneck).

Widths are multiples of an alignment (8 on CPU, 16/32 on CUDA) because kernels are tiled: a width off the tile
size often runs no faster than the next multiple up, and sometimes slower. Which widths and forms actually pay
off on a device is then *measured* (:mod:`compress.planning.table`), not assumed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import CompressError
from ..transforms.rewrite.registry import RewriteConfig, config_for_kind, planner_kinds
from .shapes import ConvShape

__all__ = ["form_kinds", "rewrite_kinds", "BLOCK_KINDS", "Form", "aligned_widths", "default_align",
           "rewrite_forms", "MIN_REWRITE_CHANNELS"]

BLOCK_KINDS = ("drop",)  # whole residual blocks replaced by the identity (compress.planning.blocks)

# Rewriting very narrow convs saves next to nothing and costs a large share of their (few) channels.
MIN_REWRITE_CHANNELS = 16


def rewrite_kinds() -> tuple[str, ...]:
    """The rewrite kinds the planner can use: every registered kind with ``planner_values``."""
    return tuple(planner_kinds())


def form_kinds() -> tuple[str, ...]:
    """Every ``forms`` entry a plan accepts: ``prune``, the planner's rewrite kinds and the block forms."""
    return ("prune",) + rewrite_kinds() + BLOCK_KINDS


@dataclass(frozen=True)
class Form:
    """One rewrite of a dense conv: a registered kind and one of its ``planner_values``.

    Every figure is the kind's own (:class:`~compress.transforms.rewrite.registry.RewriteConfig`'s ``form_*``
    methods), so a kind is described in one place.

    Attributes:
        kind: a registered rewrite kind (e.g. ``"grouped"``: ``value`` = groups; ``"separable"``: the depthwise
            multiplier ``T``; ``"bottleneck"``: the rank as a fraction of the input channels).
        value: the kind's parameter.
    """

    kind: str
    value: int | float

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.value}"

    @property
    def config(self) -> type[RewriteConfig]:
        """The kind's config class."""
        return config_for_kind(self.kind)

    @classmethod
    def parse(cls, key: str) -> "Form":
        kind, _, value = key.partition(":")
        return cls(kind, int(value) if value.lstrip("-").isdigit() else float(value))

    def params(self, in_channels: int) -> dict[str, Any]:
        """Keyword options for :func:`compress.transforms.rewrite.apply.rewrite` at ``in_channels`` inputs."""
        return self.config.form_options(self.value, in_channels)

    def fits(self, shape: ConvShape) -> bool:
        """Whether this rewrite is defined for a dense conv of ``shape`` (divisibility, kernel size)."""
        if shape.groups != 1 or not isinstance(shape.padding, tuple):
            return False
        return self.config.form_fits(shape, self.value)

    def macs(self, shape: ConvShape) -> int:
        """Per-sample multiply-accumulates of the rewritten conv (bias adds not counted)."""
        return self.config.form_macs(shape, self.value)

    def param_count(self, shape: ConvShape) -> int:
        return self.config.form_params(shape, self.value)

    def error2(self, conv: nn.Conv2d, *, moments: torch.Tensor | None = None) -> float:
        """Squared relative error of rewriting the real ``conv`` into this form (``moments``: its input patch
        moments, read by data-aware kinds)."""
        return self.config.form_error2(conv, self.value, moments=moments)

    def module(self, shape: ConvShape, *, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> nn.Module:
        """The replacement the transforms build for a conv of ``shape`` (random weights, for timing)."""
        return self.config.form_module(shape, self.value, device=device, dtype=dtype)


def aligned_widths(channels: int, *, align: int, min_keep: float = 0.25, max_widths: int = 8) -> list[int]:
    """Candidate pruned widths of a ``channels``-wide group, largest first (``channels`` itself excluded).

    Widths are multiples of ``align`` in ``[min_keep * channels, channels)``. When there are more than
    ``max_widths`` of them the step doubles (``2 * align``, ``4 * align``, ...) until at most ``max_widths``
    remain, and the widths are the multiples of that step: a coarser grid keeps to the widths wider kernel
    tiles favour (with ``align`` 8: multiples of 16, then 32), never odd multiples of ``align``. Every candidate
    is measured, so which widths pay off is still the table's to say.

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
    step = align
    while (top // step * step - math.ceil(low / step) * step) // step + 1 > max_widths:
        step *= 2
    widths = list(range(top // step * step, math.ceil(low / step) * step - 1, -step))
    return widths or [top]  # no multiple of the step in range: the widest aligned width alone


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
    forms = [Form(kind, value) for kind in rewrite_kinds() if kind in kinds
             for value in config_for_kind(kind).planner_values]
    return [f for f in forms if f.fits(shape)]
