"""Planted dead channels are found exactly, with the right reason and constant value."""
from __future__ import annotations

import pytest
import torch

from analysis_helpers import DeadNet, plant_dead, random_batches
from compress.analysis import DeadChannel, analyze


@pytest.fixture(scope="module")
def planted():
    torch.manual_seed(0)
    net = DeadNet()
    batches = random_batches(4, batch=8)
    truth = plant_dead(net, batches)
    return net, batches, truth, analyze(net, batches, verbose=False)


def test_points_follow_bn_and_activation(planted):
    _, _, _, analysis = planted
    assert analysis.layers == ["dw", "conv0", "conv1", "conv2"]
    assert [analysis.point(l) for l in analysis.layers] == ["dw_act", "act0", "act1", "act2"]
    assert [analysis.activation(l) for l in analysis.layers] == ["ReLU", "ReLU", "ReLU", "ReLU6"]


def test_dead_channels_exact_precision_and_recall(planted):
    _, _, truth, analysis = planted
    found = analysis.dead_channels()
    assert {l: sorted(d) for l, d in found.items()} == {l: sorted(t) for l, t in truth.items()}
    for layer, channels in truth.items():
        for c, (kind, value) in channels.items():
            dead = found[layer][c]
            assert dead.kind == kind, (layer, c, dead)
            if value is None:
                assert dead.value is None
            else:
                assert dead.value == pytest.approx(value, abs=1e-5), (layer, c, dead)


def test_apoz_channel_measured_and_threshold_respected(planted):
    _, _, _, analysis = planted
    assert float(analysis.stats("conv0")["apoz"][7]) == pytest.approx(0.995, abs=1e-4)
    assert 7 not in analysis.dead_channels(apoz_threshold=0.999)["conv0"]
    # the always-zero ReLU channel is "constant" (precedence over apoz) although its APoZ is 1.0
    assert float(analysis.stats("conv0")["apoz"][5]) == 1.0
    assert analysis.dead_channels()["conv0"][5].kind == "constant"


def test_model_untouched(planted):
    net, batches, _, analysis = planted
    net.train()
    net.bn1.eval()  # mixed modes must come back exactly
    before = {k: v.clone() for k, v in net.state_dict().items()}
    analyze(net, batches[:1], verbose=False)
    assert net.training and not net.bn1.training and net.conv1.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_dead_channel_str_and_frozen():
    dead = DeadChannel("zero_gamma", 0.3, 1.0)
    assert "gamma" in str(dead) and "0.3" in str(dead)
    assert "lossy" in str(DeadChannel("apoz", None, 0.995))
    assert DeadChannel("zero_filter", 0.0).to_dict()["reason"].startswith("zero filter")
    with pytest.raises(AttributeError):
        dead.kind = "constant"  # type: ignore[misc]
