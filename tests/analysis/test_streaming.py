"""Streaming statistics over batches equal statistics of all activations concatenated."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from analysis_helpers import random_batches
from compress.analysis import analyze


def _net(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),   # point: ReLU
        nn.Conv2d(6, 8, 3, padding=1, groups=2), nn.BatchNorm2d(8),    # point: BN
        nn.Conv2d(8, 4, 1),                                            # point: the conv itself
    ).to(dtype)
    with torch.no_grad():
        net[1].weight[2] = 0.0  # a constant channel must give finite (zero) correlations
        net[4].running_mean.uniform_(-0.5, 0.5)
        net[5].bias += 3.0  # a mean far from zero: the float32 path must stay accurate
    return net.eval()


def _reference(net: nn.Module, batches: list, point: str) -> torch.Tensor:
    """All outputs of module ``point`` as a float64 ``(C, N)`` matrix."""
    outs = []
    hook = dict(net.named_modules())[point].register_forward_hook(
        lambda m, a, out: outs.append(out.detach().transpose(0, 1).flatten(1).to(torch.float64)))
    with torch.no_grad():
        for x, _ in batches:
            net(x)
    hook.remove()
    return torch.cat(outs, 1)


def _corr_reference(x: torch.Tensor) -> torch.Tensor:
    corr = torch.corrcoef(x)
    const = x.amax(1) == x.amin(1)
    corr[const] = 0.0
    corr[:, const] = 0.0
    return corr


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-8), (torch.float32, 1e-6)])
def test_streaming_equals_concatenated(dtype, tol):
    net = _net(dtype)
    batches = random_batches(5, batch=4, shape=(3, 12, 12), seed=3, dtype=dtype)
    analysis = analyze(net, batches, verbose=False)
    assert [analysis.point(l) for l in analysis.layers] == ["2", "4", "5"]
    for layer in analysis.layers:
        x = _reference(net, batches, analysis.point(layer))
        stats = analysis.stats(layer)
        expected = {"mean": x.mean(1), "var": x.var(1, correction=0), "min": x.amin(1), "max": x.amax(1),
                    "mean_abs": x.abs().mean(1), "apoz": (x == 0).to(torch.float64).mean(1)}
        for key, value in expected.items():
            torch.testing.assert_close(stats[key], value, rtol=tol, atol=tol, msg=f"{layer} {key}")
        corr = analysis.correlation(layer)
        assert torch.isfinite(corr).all()
        torch.testing.assert_close(corr, _corr_reference(x), rtol=tol, atol=tol, msg=f"{layer} corr")
        assert analysis.info[layer].samples == x.shape[1]
    assert torch.all(analysis.correlation("0")[2] == 0.0)


def test_wide_layer_keeps_variance_without_matrix():
    net = _net(torch.float64)
    batches = random_batches(3, batch=2, shape=(3, 8, 8), seed=4, dtype=torch.float64)
    full = analyze(net, batches, verbose=False)
    capped = analyze(net, batches, verbose=False, max_channels_for_correlation=5)
    assert capped.has_correlation("5") and not capped.has_correlation("0") and not capped.has_correlation("3")
    torch.testing.assert_close(capped.stats("3")["var"], full.stats("3")["var"], rtol=1e-10, atol=1e-12)
    assert any("max_channels_for_correlation" in n and n.startswith("0:") for n in capped.notes)
    with pytest.raises(Exception, match="not collected"):
        capped.correlation("0")
    assert capped.summary()["layers"]["0"]["suggested_groups"] is None


def test_max_batches_and_bare_tensor_batches():
    net = _net(torch.float32)
    batches = [x for x, _ in random_batches(4, batch=2, shape=(3, 8, 8))]
    analysis = analyze(net, batches, max_batches=2, verbose=False)
    assert analysis.batches == 2 and analysis.images == 4
    assert analysis.info["0"].samples == 4 * 8 * 8
