"""Depthwise-separable rewrite: exactness at T = K², monotone error in T, budgets, conv options honoured."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.errors import CompressError
from compress.transforms import to_separable
from compress.transforms.rewrite.decompose import relative_error
from compress.transforms.rewrite.kinds.separable import SeparableConfig, separable_effective_weight, separable_errors


def _conv(dtype=torch.float64, **kw) -> nn.Conv2d:
    options = dict(kernel_size=3, stride=2, padding=2, dilation=2)
    options.update(kw)
    return nn.Conv2d(6, 10, dtype=dtype, **options)


def test_full_multiplier_reproduces_dense_output_float64():
    conv = _conv()
    x = torch.randn(2, 6, 11, 11, dtype=torch.float64)
    sep = to_separable(conv, 9)
    assert relative_error(sep(x), conv(x)) < 1e-12
    assert sep.depthwise.groups == 6 and sep.depthwise.out_channels == 54
    assert sep.depthwise.stride == (2, 2) and sep.depthwise.dilation == (2, 2) and sep.depthwise.padding == (2, 2)


def test_full_multiplier_float32_within_1e5_and_dtype_kept():
    conv = _conv(dtype=torch.float32, kernel_size=5, stride=1, padding=2, dilation=1)
    x = torch.randn(1, 6, 9, 9)
    sep = to_separable(conv, 25)
    out = sep(x)
    assert out.dtype == torch.float32 and sep.pointwise.weight.dtype == torch.float32
    assert relative_error(out, conv(x)) <= 1e-5


def test_error_shrinks_with_T_and_matches_svd_tail():
    conv = _conv(stride=1, padding=1, dilation=1)
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    closed = separable_errors(conv)
    weight_errors, output_errors = [], []
    for t in range(1, 10):
        sep = to_separable(conv, t)
        weight_errors.append(relative_error(separable_effective_weight(sep), conv.weight))
        output_errors.append(relative_error(sep(x), conv(x)))
        assert weight_errors[-1] == pytest.approx(float(closed[t]), abs=1e-10)
    assert all(a >= b - 1e-12 for a, b in zip(weight_errors, weight_errors[1:]))
    assert weight_errors[0] > 0.1 and weight_errors[-1] < 1e-12
    assert output_errors[-1] < 1e-12


def test_effective_weight_is_what_the_module_computes():
    conv = _conv(stride=1, padding=1, dilation=1)
    sep = to_separable(conv, 2)
    x = torch.randn(1, 6, 7, 7, dtype=torch.float64)
    expected = nn.functional.conv2d(x, separable_effective_weight(sep), conv.bias, padding=1)
    assert relative_error(sep(x), expected) < 1e-12


def test_max_error_picks_smallest_sufficient_T():
    conv = _conv(stride=1, padding=1, dilation=1)
    errors = separable_errors(conv)
    budget = float(errors[4]) + 1e-9
    config = SeparableConfig.plan(conv, max_error=budget)
    assert config.T == 4
    assert float(errors[3]) > budget


def test_bias_goes_to_pointwise():
    conv = _conv()
    sep = to_separable(conv, 3)
    assert sep.depthwise.bias is None
    assert torch.equal(sep.pointwise.bias, conv.bias)
    no_bias = to_separable(_conv(bias=False), 3)
    assert no_bias.pointwise.bias is None


@pytest.mark.parametrize("conv, match", [
    (nn.Conv2d(4, 4, 1), "1x1"),
    (nn.Conv2d(4, 4, 3, groups=2), "groups=2"),
    (nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), "padding_mode"),
    (nn.Conv2d(4, 4, 3, padding="same"), "string padding"),
])
def test_rejects_unsupported_convs(conv, match):
    with pytest.raises(CompressError, match=match):
        to_separable(conv, 1)


def test_rejects_T_beyond_kernel_taps_and_invalid_config():
    with pytest.raises(CompressError, match="exceeds"):
        to_separable(_conv(), 10)
    with pytest.raises(CompressError):
        SeparableConfig(T=0)
    with pytest.raises(CompressError, match="null when T is set"):
        SeparableConfig.plan(_conv(), T=2, max_error=0.1)
