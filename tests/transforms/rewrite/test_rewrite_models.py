"""Every rewrite kind on torchvision resnet18, vgg11_bn and mobilenet_v2 (random init, 32 px, 10 classes).

The default tests rewrite a few representative layers of each model (fast); the ``slow`` ones rewrite every
eligible layer.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from compress.transforms import ChannelPermute, rewrite
from compress.transforms.rewrite.decompose import relative_error
from compress.transforms.rewrite.registry import config_for_kind, kinds

X = torch.randn(1, 3, 32, 32)

# The registry is the test matrix: every registered kind, with the options it declares as representative.
KINDS = {kind: config_for_kind(kind).example_options for kind in kinds()}
# A few layers per model: dense 3x3s, a 1x1 and (resnet) the 7x7 stem; min_channels=3 lets stems in.
SUBSETS = {
    "resnet18": ["conv1", "layer1.0.*", "layer2.0.*"],
    "vgg11_bn": ["features.0", "features.4", "features.8"],
    "mobilenet_v2": ["features.0.0", "features.2.conv.*"],
}


@pytest.fixture(scope="module")
def pristine():
    """One random-init instance per architecture (vgg11_bn takes seconds to build); tests copy them."""
    torch.manual_seed(0)
    return {name: getattr(torchvision.models, name)(weights=None, num_classes=10).eval() for name in SUBSETS}


def _check(model: nn.Module, kind: str, include: list[str] | None) -> list:
    reference = model(X)
    records = rewrite(model, kind, include=include or (), example_inputs=X, min_channels=3, **KINDS[kind])
    done = [r for r in records if r.skipped is None]
    out = model(X)
    assert out.shape == reference.shape == (1, 10)
    for r in done:
        assert r.macs_after < r.macs_before and r.params_after < r.params_before, r
        assert r.weight_error is not None and r.output_error is not None
    if not done:  # nothing eligible (no K >= 5 conv for dilated): the model is untouched
        assert torch.equal(out, reference)
    return records


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("arch", sorted(SUBSETS))
def test_kind_on_model_subset(pristine, arch, kind):
    records = _check(copy.deepcopy(pristine[arch]), kind, SUBSETS[arch])
    expect_some = not (kind == "dilated" and arch != "resnet18")
    assert any(r.skipped is None for r in records) == expect_some


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("arch", sorted(SUBSETS))
def test_kind_on_whole_model(pristine, arch, kind):
    _check(copy.deepcopy(pristine[arch]), kind, None)


# resnet18 at 32 px: layer1 runs at 8x8 with 64 channels; the 7x7 stem (3 -> 64, stride 2) outputs 16x16.
HAND = {
    "grouped": ("layer1.0.conv1", 8 * 8 * 9 * 64 * 64, 8 * 8 * 9 * 64 * 64 // 2),
    "separable": ("layer1.0.conv1", 8 * 8 * 9 * 64 * 64, 64 * 8 * 8 * (9 * 2 + 2 * 64)),
    "shuffle": ("layer1.0.conv1", 8 * 8 * 9 * 64 * 64, 8 * 8 * 64 * 16 + 8 * 8 * 9 * 64 + 8 * 8 * 64 * 16),
    "bottleneck": ("layer1.0.conv1", 8 * 8 * 9 * 64 * 64, 8 * 8 * 64 * 32 + 8 * 8 * 9 * 32 * 64),
    "dilated": ("conv1", 16 * 16 * 49 * 3 * 64, 16 * 16 * 9 * 3 * 64),
}


@pytest.mark.parametrize("kind", sorted(HAND))
def test_record_macs_match_hand_formulas(pristine, kind):
    layer, before, after = HAND[kind]
    model = copy.deepcopy(pristine["resnet18"])
    (record,) = rewrite(model, kind, layers=[layer], example_inputs=X, min_channels=3, **KINDS[kind])
    assert (record.macs_before, record.macs_after) == (before, after)
    dense_params = {"conv1": 3 * 64 * 49, "layer1.0.conv1": 64 * 64 * 9}[layer]
    assert record.params_before == dense_params


def test_permute_folding_on_resnet_is_exact(pristine):
    model = copy.deepcopy(pristine["resnet18"]).double()
    unfolded = copy.deepcopy(model)
    x = X.double()
    records = rewrite(model, "grouped", include=["layer1.*", "layer2.0.conv1"], example_inputs=x, groups=4)
    rewrite(unfolded, "grouped", include=["layer1.*", "layer2.0.conv1"], example_inputs=x, groups=4, absorb=False)
    assert relative_error(model(x), unfolded(x)) < 1e-12
    statuses = [s for r in records for s in r.details["permutes"].values()]
    assert "absorbed" in statuses
    left = sum(isinstance(m, ChannelPermute) for m in model.modules())
    assert left == len(statuses) - statuses.count("absorbed") < sum(
        isinstance(m, ChannelPermute) for m in unfolded.modules())
