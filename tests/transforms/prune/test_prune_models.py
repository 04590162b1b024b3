"""A representative torchvision set prunes at channel ratio 0.3 and still runs (32 px, 10 classes)."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from compress.transforms.prune.pruner import prune

FAST = ["resnet18", "mobilenet_v2", "shufflenet_v2_x0_5", "squeezenet1_0", "mobilenet_v3_small", "efficientnet_b0",
        "regnet_x_400mf", "googlenet", "convnext_tiny"]
SLOW = ["densenet121", "vgg11_bn"]  # ~20 s each on the loaded 2-core CI, ~5 s idle (120 concat groups; 130M params)


def _build(name: str) -> nn.Module:
    kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    return torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs).eval()


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_prunes_at_ratio_0_3_and_runs(name):
    model = _build(name)
    x = torch.randn(1, 3, 32, 32)
    result = prune(model, x, ratio=0.3)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)  # the classifier's outputs are protected (a conv for squeezenet)
    assert _first_conv(model).in_channels == 3
    assert 0.3 < result.macs_fraction < 0.75 and result.params_after < result.params_before
    assert result.ignored  # the auto-detected classifier
