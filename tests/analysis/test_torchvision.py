"""analyze runs on real torchvision architectures (grouped, depthwise, residual) with sane outputs."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from analysis_helpers import random_batches
from compress.analysis import analyze

# (constructor, a conv and the point its statistics must be taken at)
MODELS = {
    "resnet18": ("layer1.0.conv1", "layer1.0.relu"),  # shared in-place ReLU, first call
    "mobilenet_v2": ("features.1.conv.0.0", "features.1.conv.0.2"),  # depthwise -> BN -> ReLU6
    "shufflenet_v2_x0_5": ("stage2.0.branch1.0", "stage2.0.branch1.1"),  # depthwise -> BN, no activation
    "regnet_x_400mf": ("trunk_output.block1.block1-0.f.b.0", "trunk_output.block1.block1-0.f.b.2"),  # grouped
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_torchvision_model(name):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    analysis = analyze(model, random_batches(2, batch=2, shape=(3, 32, 32)), verbose=False)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert analysis.layers == [n for n, _ in convs]
    conv, point = MODELS[name]
    assert analysis.point(conv) == point
    for layer, module in convs:
        stats = analysis.stats(layer)
        for key, value in stats.items():
            assert value.shape == (module.out_channels,), (layer, key)
            assert torch.isfinite(value).all(), (layer, key)
        assert analysis.info[layer].samples > 0
        corr = analysis.correlation(layer)
        assert corr.shape == (module.out_channels,) * 2 and torch.isfinite(corr).all()
    assert "gamma" in analysis.stats(conv)
