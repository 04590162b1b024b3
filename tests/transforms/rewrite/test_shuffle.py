"""ShuffleNet rewrite: exact on representable 1x1 weights, monotone in width, unit form, pruning locks."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.errors import CompressError
from compress.transforms import ChannelShuffle, to_shuffled
from compress.transforms.rewrite.decompose import relative_error
from compress.transforms.rewrite.kinds.shuffle import ShuffleConfig, shuffle_effective_weight


def _set_weight(conv: nn.Conv2d, weight: torch.Tensor) -> nn.Conv2d:
    with torch.no_grad():
        conv.weight.copy_(weight.reshape(conv.weight.shape))
    return conv


@pytest.mark.parametrize("m, n, g, width", [(8, 12, 2, 8), (12, 12, 3, 18), (8, 8, 4, 16)])
def test_pointwise_built_as_grouped_shuffle_grouped_is_exact(m, n, g, width):
    source = nn.Sequential(nn.Conv2d(m, width, 1, groups=g, bias=False, dtype=torch.float64), ChannelShuffle(g),
                           nn.Conv2d(width, n, 1, groups=g, dtype=torch.float64))
    x = torch.randn(2, m, 5, 5, dtype=torch.float64)
    dense = nn.Conv2d(m, n, 1, dtype=torch.float64)
    probe = torch.eye(m, dtype=torch.float64).reshape(m, m, 1, 1)  # the composed linear map, column by column
    _set_weight(dense, (source(probe) - source[2].bias.reshape(1, n, 1, 1)).reshape(m, n).T)
    with torch.no_grad():
        dense.bias.copy_(source[2].bias)
    assert relative_error(dense(x), source(x)) < 1e-12
    new = to_shuffled(dense, g, width=width)
    assert relative_error(new(x), dense(x)) < 1e-10


def test_pointwise_block_diagonal_after_shuffle_is_exact():
    g, c = 4, 16
    block_diag = torch.block_diag(*[torch.randn(c // g, c // g, dtype=torch.float64) for _ in range(g)])
    j = torch.arange(c)
    shuffled_rows = block_diag[(j % g) * (c // g) + j // g]  # ChannelShuffle applied to the outputs
    dense = _set_weight(nn.Conv2d(c, c, 1, dtype=torch.float64), shuffled_rows)
    x = torch.randn(1, c, 4, 4, dtype=torch.float64)
    new = to_shuffled(dense, g)
    assert relative_error(new(x), dense(x)) < 1e-10


def test_pointwise_error_shrinks_with_width_and_keeps_stride_padding():
    dense = nn.Conv2d(8, 8, 1, stride=2, padding=1, dtype=torch.float64)
    x = torch.randn(1, 8, 7, 7, dtype=torch.float64)
    errors = []
    for width in (4, 8, 16, 32):
        new = to_shuffled(dense, 2, width=width)
        assert new(x).shape == dense(x).shape
        errors.append(relative_error(shuffle_effective_weight(new), dense.weight))
        expected = nn.functional.conv2d(x, shuffle_effective_weight(new), dense.bias, stride=2, padding=1)
        assert relative_error(new(x), expected) < 1e-12
    assert all(a >= b - 1e-12 for a, b in zip(errors, errors[1:]))
    # width w gives each of the 2x2 blocks (4x4 each) w/4 terms: exact once w/4 >= 4
    assert errors[0] > 0.1 and errors[2] < 1e-10 and errors[3] < 1e-10


def test_unit_form_shape_dtype_and_effective_weight():
    dense = nn.Conv2d(8, 12, 3, stride=2, padding=2, dilation=2)
    x = torch.randn(2, 8, 9, 9)
    new = to_shuffled(dense, 4, width=16)
    assert [n for n, _ in new.named_children()] == ["reduce", "shuffle", "depthwise", "expand"]
    assert new.depthwise.groups == 16 and new.depthwise.stride == (2, 2) and new.depthwise.dilation == (2, 2)
    out = new(x)
    assert out.shape == dense(x).shape and out.dtype == torch.float32
    expected = nn.functional.conv2d(x, shuffle_effective_weight(new), dense.bias, stride=2, padding=2, dilation=2)
    assert relative_error(out, expected) < 1e-5


def test_unit_form_error_shrinks_with_width():
    dense = nn.Conv2d(8, 8, 3, padding=1, dtype=torch.float64)
    errors = [relative_error(shuffle_effective_weight(to_shuffled(dense, 2, width=w)), dense.weight)
              for w in (4, 16, 64)]
    assert errors[0] > errors[1] > errors[2]


def test_rejects_bad_groups():
    with pytest.raises(CompressError, match="must divide width"):
        to_shuffled(nn.Conv2d(8, 8, 1), 4, width=6)
    with pytest.raises(CompressError, match="in_channels"):
        to_shuffled(nn.Conv2d(6, 8, 1), 4)
    with pytest.raises(CompressError, match="groups: expected an integer >= 2"):
        ShuffleConfig.plan(nn.Conv2d(8, 8, 1))
    with pytest.raises(CompressError):
        ShuffleConfig(groups=0)
