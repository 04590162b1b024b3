"""Data-aware separable rewrite: patch moments, exactness at T = K², output-error optimality and monotone errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.errors import CompressError
from compress.transforms import to_separable
from compress.transforms.rewrite.decompose import relative_error
from compress.transforms.rewrite.patch_stats import PatchMoments, capture_patch_moments
from compress.transforms.rewrite.kinds.separable import SeparableConfig, separable_effective_weight, separable_errors


def _inputs(m: int, *, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """Spatially smooth, channel-scaled, non-negative inputs: patch moments far from the identity."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, m, 12, 12, generator=g, dtype=torch.float64)
    x = nn.functional.avg_pool2d(x, 3, stride=1, padding=1).relu() + 0.3
    scale = torch.logspace(-1, 1, m, dtype=torch.float64).view(1, m, 1, 1)
    return (x * scale).to(dtype)


def _moments(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    stats = PatchMoments(conv)
    stats.update(x)
    return stats.mean()


def _no_bias(conv: nn.Conv2d, x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """The module's output without the (shared) bias: the part the factorisation approximates."""
    bias = conv.bias.view(1, -1, 1, 1) if conv.bias is not None else 0.0
    return module(x) - bias


@pytest.mark.parametrize("options", [dict(kernel_size=3, padding=1),
                                     dict(kernel_size=(3, 5), stride=2, padding=(2, 1), dilation=(2, 1)),
                                     dict(kernel_size=5)])
def test_patch_moments_match_unfold(options):
    conv = nn.Conv2d(4, 6, dtype=torch.float64, **options)
    x = torch.randn(3, 4, 11, 13, dtype=torch.float64)
    stats = PatchMoments(conv)
    stats.update(x[:2])
    stats.update(x[2:])  # running mean over batches
    cols = nn.functional.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
    cols = cols.reshape(3, 4, -1, cols.shape[-1])
    reference = torch.einsum("bmkl,bmjl->mkj", cols, cols) / (3 * cols.shape[-1])
    assert torch.allclose(stats.mean(), reference, rtol=1e-12, atol=1e-12)


def test_capture_sees_each_convs_real_input_and_restores_mode():
    net = nn.Sequential(nn.Conv2d(2, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(), nn.Conv2d(5, 6, 3, padding=1))
    net.train()
    x = torch.randn(3, 2, 8, 8)
    moments = capture_patch_moments(net, {"3": net[3]}, [x[:1], (x[1:], torch.zeros(2))])
    assert net.training and set(moments) == {"3"}
    with torch.no_grad():
        net.eval()
        hidden = net[2](net[1](net[0](x)))
    assert torch.allclose(moments["3"], _moments(net[3], hidden), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("m, n", [(3, 5), (3, 12)])  # N < K² and N > K² (projection needs the ridge)
def test_full_multiplier_with_moments_is_exact(m, n):
    conv = nn.Conv2d(m, n, 3, padding=1, dtype=torch.float64)
    x = _inputs(m)
    x[:, 0] = 0.0  # a dead channel: singular moments
    sep = to_separable(conv, 9, moments=_moments(conv, x))
    probe = torch.randn(2, m, 7, 7, dtype=torch.float64)  # exact on any input, not only the calibration data
    assert relative_error(sep(probe), conv(probe)) < 1e-10
    assert relative_error(separable_effective_weight(sep), conv.weight) < 1e-10


def test_full_multiplier_with_moments_float32_within_1e5():
    conv = nn.Conv2d(4, 16, 3, padding=1)
    x = _inputs(4, dtype=torch.float32)
    sep = to_separable(conv, 9, moments=_moments(conv, x))
    assert sep.depthwise.weight.dtype == torch.float32
    assert relative_error(sep(x), conv(x)) <= 1e-5


def test_single_channel_error_is_predicted_and_beats_weight_svd():
    # With one input channel the data-aware objective is exactly the output error on the calibration data.
    conv = nn.Conv2d(1, 12, 3, padding=1, bias=False, dtype=torch.float64)
    x = _inputs(1)
    moments = _moments(conv, x)
    predicted = separable_errors(conv, moments=moments)
    for t in range(1, 10):
        aware = relative_error(to_separable(conv, t, moments=moments)(x), conv(x))
        blind = relative_error(to_separable(conv, t)(x), conv(x))
        assert aware == pytest.approx(float(predicted[t]), abs=1e-5)
        assert aware <= blind + 1e-9


def test_every_channels_contribution_beats_weight_svd():
    conv = nn.Conv2d(3, 10, 3, padding=1, dtype=torch.float64)
    x = _inputs(3, seed=1)
    moments = _moments(conv, x)
    for t in (1, 2, 4):
        aware = separable_effective_weight(to_separable(conv, t, moments=moments))
        blind = separable_effective_weight(to_separable(conv, t))
        for c in range(3):  # channel c's output contribution is what the per-channel SVD minimises
            xc = x[:, c:c + 1]
            exact = nn.functional.conv2d(xc, conv.weight[:, c:c + 1], padding=1)
            err_aware = (nn.functional.conv2d(xc, aware[:, c:c + 1], padding=1) - exact).norm()
            err_blind = (nn.functional.conv2d(xc, blind[:, c:c + 1], padding=1) - exact).norm()
            assert err_aware <= err_blind * (1 + 1e-6)


def test_data_aware_errors_shrink_with_T_to_zero():
    conv = nn.Conv2d(4, 8, 3, padding=1, dtype=torch.float64)
    x = _inputs(4, seed=2)
    moments = _moments(conv, x)
    errors = separable_errors(conv, moments=moments)
    assert errors.shape == (10,) and float(errors[0]) == pytest.approx(1.0)
    assert all(float(a) >= float(b) - 1e-12 for a, b in zip(errors, errors[1:]))
    assert float(errors[1]) > 0.05 and float(errors[9]) < 1e-12
    measured = [relative_error(_no_bias(conv, x, to_separable(conv, t, moments=moments)), _no_bias(conv, x, conv))
                for t in range(1, 10)]
    assert all(a >= b - 1e-9 for a, b in zip(measured, measured[1:]))


def test_max_error_with_moments_reads_the_output_error():
    conv = nn.Conv2d(4, 8, 3, padding=1, dtype=torch.float64)
    moments = _moments(conv, _inputs(4, seed=3))
    errors = separable_errors(conv, moments=moments)
    config = SeparableConfig.plan(conv, max_error=float(errors[3]) + 1e-9, moments=moments)
    assert config.T == 3 and float(errors[2]) > float(errors[3]) + 1e-9
    assert config.describe(conv) == {"T": 3, "data_aware": True}


def test_rejects_moments_of_the_wrong_shape():
    conv = nn.Conv2d(4, 8, 3, padding=1)
    with pytest.raises(CompressError, match="moments"):
        to_separable(conv, 2, moments=torch.zeros(3, 9, 9))
    with pytest.raises(CompressError, match="moments"):
        SeparableConfig(T=2, moments=torch.zeros(9, 9))
