"""Dilated rewrite: exact on kernels that are zero off the dilated taps, same output size, receptive field."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.errors import CompressError
from compress.transforms import to_dilated
from compress.transforms.rewrite.decompose import relative_error
from compress.transforms.rewrite.kinds.dilated import DilatedConfig, dilated_effective_weight, receptive_field


def _zero_off_taps(conv: nn.Conv2d, d: int) -> nn.Conv2d:
    k = conv.kernel_size[0]
    c = (k - 1) // 2
    mask = torch.zeros(k, k, dtype=conv.weight.dtype)
    taps = torch.tensor([c - d, c, c + d])
    mask[taps[:, None], taps[None, :]] = 1
    with torch.no_grad():
        conv.weight.mul_(mask)
    return conv


@pytest.mark.parametrize("k, stride, base_dilation", [(5, 1, 1), (7, 2, 1), (5, 1, 2)])
def test_exact_when_kernel_is_zero_off_the_taps(k, stride, base_dilation):
    pad = base_dilation * (k - 1) // 2
    conv = _zero_off_taps(nn.Conv2d(4, 6, k, stride=stride, padding=pad, dilation=base_dilation,
                                    dtype=torch.float64), (k - 1) // 2)
    x = torch.randn(2, 4, 13, 13, dtype=torch.float64)
    new = to_dilated(conv)
    assert new.kernel_size == (3, 3) and new.dilation == ((k - 1) // 2 * base_dilation,) * 2
    assert new(x).shape == conv(x).shape
    assert relative_error(new(x), conv(x)) < 1e-12


def test_smaller_dilation_shifts_padding_and_stays_exact():
    conv = _zero_off_taps(nn.Conv2d(3, 5, 7, padding=3, dtype=torch.float64), 1)
    x = torch.randn(1, 3, 10, 10, dtype=torch.float64)
    new = to_dilated(conv, 1)
    assert new.padding == (1, 1) and new.dilation == (1, 1)
    assert relative_error(new(x), conv(x)) < 1e-12


def test_float32_weight_error_and_receptive_field():
    conv = nn.Conv2d(4, 4, 7, padding=3, groups=2)
    new = to_dilated(conv)
    assert new.groups == 2 and new.weight.dtype == torch.float32
    dense = dilated_effective_weight(new, 7)
    off = conv.weight.detach() - dense
    expected = float(off.norm() / conv.weight.detach().norm())
    assert relative_error(dense, conv.weight) == pytest.approx(expected, rel=1e-5)
    described = DilatedConfig().describe(conv)
    assert described["receptive_field_before"] == receptive_field(conv) == 7
    assert described["receptive_field_after"] == 7
    assert DilatedConfig(dilation=2).describe(conv)["receptive_field_after"] == 5


@pytest.mark.parametrize("conv, match", [
    (nn.Conv2d(4, 4, 3, padding=1), "at least 5x5"),
    (nn.Conv2d(4, 4, 6, padding=3), "at least 5x5"),
    (nn.Conv2d(4, 4, (5, 7), padding=2), "not square"),
    (nn.Conv2d(4, 4, 5, padding=2, padding_mode="circular"), "padding_mode"),
])
def test_rejects_unsupported_kernels(conv, match):
    with pytest.raises(CompressError, match=match):
        to_dilated(conv)


def test_rejects_dilation_that_cannot_keep_alignment():
    with pytest.raises(CompressError, match="needs padding"):
        to_dilated(nn.Conv2d(4, 4, 5, padding=0), 1)
    with pytest.raises(CompressError, match="outside"):
        to_dilated(nn.Conv2d(4, 4, 5, padding=2), 3)
