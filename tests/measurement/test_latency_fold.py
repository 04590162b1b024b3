"""compare_latency(fold_bn=True): every compared model is timed in BN-folded form, the originals untouched."""
from __future__ import annotations

import copy

import torch
from torch import nn

from compress.measurement import compare_latency, latency

X = torch.randn(1, 3, 16, 16)


def net(width: int = 8) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 4))


def test_every_model_is_timed_folded_and_the_originals_are_untouched():
    models = {"base": net(8).train(), "small": net(4)}
    before = {k: copy.deepcopy(m.state_dict()) for k, m in models.items()}
    comp = compare_latency(models, X, batch_sizes=(2,), runs=20, warmup=1, per_layer=True, fold_bn=True)
    for name, res in comp.results.items():
        assert res.settings.bn_folded
        timed = set(res.layers.ms)  # the leaves of the model that was actually timed
        assert timed and not any("1" == n.split(".")[-1] for n in timed)  # the BatchNorm (index 1) is gone
        assert all(torch.equal(v, models[name].state_dict()[k]) for k, v in before[name].items())
    assert models["base"].training  # the caller's model keeps its mode
    assert comp.rows()[0]["bn_folded"] is True


def test_unfolded_by_default():
    res = latency(net(), X, batch_sizes=(1,), runs=20, warmup=0, per_layer=True)
    assert not res.settings.bn_folded and "1" in res.layers.ms
