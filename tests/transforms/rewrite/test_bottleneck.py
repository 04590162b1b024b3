"""Bottleneck (1x1 projection + KxK) rewrite: exact at full rank, monotone error, rank from ratio or budget."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.errors import CompressError
from compress.transforms import to_bottleneck
from compress.transforms.rewrite.kinds.bottleneck import BottleneckConfig, bottleneck_effective_weight, bottleneck_errors
from compress.transforms.rewrite.decompose import relative_error


def test_full_rank_is_exact_and_keeps_conv_options():
    conv = nn.Conv2d(8, 6, 3, stride=2, padding=2, dilation=2, dtype=torch.float64)
    x = torch.randn(2, 8, 10, 10, dtype=torch.float64)
    bot = to_bottleneck(conv, 8)
    assert relative_error(bot(x), conv(x)) < 1e-12
    assert bot.reduce.kernel_size == (1, 1) and bot.reduce.bias is None
    assert (bot.conv.stride, bot.conv.padding, bot.conv.dilation) == ((2, 2), (2, 2), (2, 2))
    assert torch.equal(bot.conv.bias, conv.bias)


def test_float32_full_rank_within_1e5():
    conv = nn.Conv2d(8, 6, 3, padding=1)
    x = torch.randn(1, 8, 6, 6)
    bot = to_bottleneck(conv, 8)
    assert bot.conv.weight.dtype == torch.float32
    assert relative_error(bot(x), conv(x)) <= 1e-5


def test_wide_pointwise_full_rank_is_exact():
    # M = 12 inputs > N*K*K = 4: the projection needs an orthonormal complement to stay exact at r = M.
    conv = nn.Conv2d(12, 4, 1, dtype=torch.float64)
    x = torch.randn(1, 12, 5, 5, dtype=torch.float64)
    assert relative_error(to_bottleneck(conv, 12)(x), conv(x)) < 1e-12


def test_error_shrinks_with_rank_and_matches_closed_form():
    conv = nn.Conv2d(8, 6, 3, padding=1, dtype=torch.float64)
    closed = bottleneck_errors(conv)
    errors = []
    for r in range(1, 9):
        errors.append(relative_error(bottleneck_effective_weight(to_bottleneck(conv, r)), conv.weight))
        assert errors[-1] == pytest.approx(float(closed[r]), abs=1e-10)
    assert all(a >= b - 1e-12 for a, b in zip(errors, errors[1:]))
    assert errors[0] > 0.1


def test_rank_from_ratio_and_budget():
    conv = nn.Conv2d(10, 6, 3, padding=1, dtype=torch.float64)
    assert BottleneckConfig.plan(conv, rank_ratio=0.3).rank == 3
    assert BottleneckConfig.plan(conv).rank == 5  # default ratio 0.5
    errors = bottleneck_errors(conv)
    budget = float(errors[6]) + 1e-9
    assert BottleneckConfig.plan(conv, max_error=budget).rank == 6
    with pytest.raises(CompressError, match="only one"):
        BottleneckConfig.plan(conv, rank=2, rank_ratio=0.5)


def test_rejects_bad_rank_and_grouped_conv():
    with pytest.raises(CompressError, match="exceeds"):
        to_bottleneck(nn.Conv2d(4, 4, 3), 5)
    with pytest.raises(CompressError, match="groups=2"):
        to_bottleneck(nn.Conv2d(4, 4, 3, groups=2), 2)
    with pytest.raises(CompressError):
        BottleneckConfig(rank=0)


def test_strided_pointwise_projects_at_output_resolution():
    conv = nn.Conv2d(8, 6, 1, stride=2, padding=1, dtype=torch.float64)
    x = torch.randn(1, 8, 9, 9, dtype=torch.float64)
    bot = to_bottleneck(conv, 8)
    assert bot.reduce.stride == (2, 2) and bot.conv.stride == (1, 1)
    assert relative_error(bot(x), conv(x)) < 1e-12
