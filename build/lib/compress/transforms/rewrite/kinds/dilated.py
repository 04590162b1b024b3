"""Large KxK conv (K >= 5, odd) -> 3x3 dilated conv sampling the dense kernel at the dilated taps.

With ``c = (K-1)/2`` the centre index, a 3x3 kernel with dilation ``d`` (in kernel-index units) reads the dense
taps ``c-d, c, c+d`` along each axis. The new conv's dilation is ``d * D`` (``D`` the dense conv's dilation) and
its padding ``P - (c-d)*D``, so every output pixel sees the same input pixels at those taps and the output size
is unchanged. The default ``d = c`` keeps the dense receptive field ``D*(K-1)+1`` (taps at the kernel's corners,
edges and centre). The weights are the dense taps themselves, so the rewrite is exact when the dense kernel is
zero elsewhere and the relative weight error is the norm of the dropped taps over ``||W||``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ....config import check
from ....errors import CompressError
from ..registry import KindOptions, RewriteConfig, apply_config, conv_problem, register_handler

__all__ = ["DilatedConfig", "DilatedOptions", "to_dilated", "dilated_effective_weight", "receptive_field"]


@dataclasses.dataclass(frozen=True)
class DilatedOptions(KindOptions):
    """Options of the dilated rewrite.

    Attributes:
        dilation: tap spacing in kernel-index units, an integer >= 1 (default ``(K-1)/2``).
    """

    dilation: int | None = None

    def validate(self) -> None:
        check(self.dilation is None or (isinstance(self.dilation, int) and not isinstance(self.dilation, bool)
                                        and self.dilation >= 1), "dilation", "an integer >= 1", self.dilation)


@dataclasses.dataclass(frozen=True)
class DilatedConfig(RewriteConfig):
    """A dilated rewrite of one conv.

    Attributes:
        dilation: tap spacing ``d`` in kernel-index units, ``1 <= d <= (K-1)/2``; ``None``: ``(K-1)/2``.
    """

    kind = "dilated"
    Options = DilatedOptions

    dilation: int | None = None

    def validate(self) -> None:
        check(self.dilation is None or (isinstance(self.dilation, int) and self.dilation >= 1), "dilation",
              "an integer >= 1 or null", self.dilation)

    @classmethod
    def eligibility(cls, conv: nn.Conv2d) -> str | None:
        reason = conv_problem(conv)
        if reason is None:
            kh, kw = conv.kernel_size
            if kh != kw or kh < 5 or kh % 2 == 0:
                reason = f"kernel {kh}x{kw} is not square, odd and at least 5x5"
        return reason

    def check_layer(self, conv: nn.Conv2d) -> None:
        super().check_layer(conv)
        c = (conv.kernel_size[0] - 1) // 2
        d = self.tap_spacing(conv)
        if d > c:
            raise CompressError(f"dilated rewrite: dilation={d} reaches outside the {conv.kernel_size[0]}x"
                                f"{conv.kernel_size[0]} kernel (at most {c})")
        for axis in range(2):
            if conv.padding[axis] < (c - d) * conv.dilation[axis]:
                raise CompressError(f"dilated rewrite: dilation={d} needs padding >= {(c - d) * conv.dilation[axis]}"
                                    f" to keep the output aligned, the conv has {conv.padding[axis]}")

    def tap_spacing(self, conv: nn.Conv2d) -> int:
        """``d`` in kernel-index units (the default: ``(K-1)/2``)."""
        return (conv.kernel_size[0] - 1) // 2 if self.dilation is None else self.dilation

    def effective_weight(self, conv: nn.Conv2d, new: nn.Module) -> torch.Tensor:
        return dilated_effective_weight(new, conv.kernel_size[0], conv.dilation[0])

    def describe(self, conv: nn.Conv2d) -> dict[str, Any]:
        d = self.tap_spacing(conv)
        return {"dilation": d, "receptive_field_before": receptive_field(conv),
                "receptive_field_after": 2 * d * conv.dilation[0] + 1}


def receptive_field(conv: nn.Conv2d) -> int:
    """Receptive field of one conv along its first axis: ``dilation * (K - 1) + 1`` input pixels."""
    return conv.dilation[0] * (conv.kernel_size[0] - 1) + 1


def to_dilated(conv: nn.Conv2d, dilation: int | None = None) -> nn.Conv2d:
    """Replace a KxK conv (K >= 5, odd) by a 3x3 conv over the same (default) receptive field.

    Args:
        conv: ``nn.Conv2d`` with a square odd kernel ``K >= 5`` (any ``groups``).
        dilation: tap spacing ``d`` in kernel-index units, ``1..(K-1)/2``; default ``(K-1)/2``.

    Returns:
        ``nn.Conv2d`` with kernel 3, dilation ``d * conv.dilation``, padding ``P - ((K-1)/2 - d) *
        conv.dilation`` and the same stride, groups and bias. Input ``(B, M, H, W)`` -> output like ``conv``.
    """
    return apply_config(conv, DilatedConfig(dilation=dilation))


def _tap_index(conv: nn.Conv2d, d: int) -> torch.Tensor:
    c = (conv.kernel_size[0] - 1) // 2
    return torch.tensor([c - d, c, c + d], device=conv.weight.device)


@register_handler(DilatedConfig)
def _dilated(conv: nn.Conv2d, config: DilatedConfig) -> nn.Conv2d:
    d = config.tap_spacing(conv)
    c = (conv.kernel_size[0] - 1) // 2
    taps = _tap_index(conv, d)
    new = nn.Conv2d(conv.in_channels, conv.out_channels, 3, stride=conv.stride,
                    padding=tuple(p - (c - d) * dd for p, dd in zip(conv.padding, conv.dilation)),
                    dilation=tuple(d * dd for dd in conv.dilation), groups=conv.groups,
                    bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(conv.weight.detach()[:, :, taps][:, :, :, taps])
        if conv.bias is not None:
            new.bias.copy_(conv.bias.detach())
    return new


def dilated_effective_weight(new: nn.Conv2d, kernel_size: int, base_dilation: int = 1) -> torch.Tensor:
    """The dense ``(N, M/groups, K, K)`` weight computed by a :func:`to_dilated` result (zeros off the taps)."""
    d = new.dilation[0] // base_dilation
    c = (kernel_size - 1) // 2
    taps = torch.tensor([c - d, c, c + d], device=new.weight.device)
    dense = new.weight.new_zeros(*new.weight.shape[:2], kernel_size, kernel_size)
    dense[:, :, taps[:, None], taps[None, :]] = new.weight.detach()
    return dense
