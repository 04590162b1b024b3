"""Rewritten models stay prunable by torch-pruning (MagnitudePruner at ratio 0.3) and still run.

Channels that torch-pruning cannot prune correctly (through ChannelShuffle/ChannelPermute, into a depthwise conv
with channel multiplier) are locked with ``register_shuffle_pruner``; the tests check both that pruning works
and that the locked channels stay intact.
"""
from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
import torchvision
from torch import nn

from compress.errors import CompressError
from compress.transforms import ChannelPermute, ChannelShuffle, rewrite
from compress.transforms.reorder import locked_layers
from compress.transforms.shuffle import register_shuffle_pruner, to_shuffled

X = torch.randn(1, 3, 32, 32)
KINDS = {
    "grouped": {"groups": 2},
    "separable": {"T": 2},
    "shuffle": {"groups": 4},
    "dilated": {},
    "bottleneck": {"rank_ratio": 0.5},
}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _prune(model: nn.Module, example: torch.Tensor, ignored: list[nn.Module], *, lock: bool = True) -> None:
    kwargs: dict = {"ignored_layers": list(ignored)}
    if lock:
        register_shuffle_pruner(kwargs, model, example)
    else:
        kwargs["customized_pruners"] = register_shuffle_pruner({})["customized_pruners"]
    pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=0.3, in_channel_groups={}, out_channel_groups={},
                                       num_heads={}, channel_groups={}, **kwargs)
    pruner.step()


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_resnet18_prunes_after_each_rewrite(kind):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    records = rewrite(model, kind, include=["conv1", "layer1.*", "layer2.0.*"], example_inputs=X, min_channels=3,
                      **KINDS[kind])
    assert any(r.skipped is None for r in records)
    before = _params(model)
    _prune(model, X, [model.fc])
    assert model(X).shape == (1, 10)
    assert _params(model) < 0.8 * before


def test_shuffle_channels_stay_locked_and_grouped_convs_consistent():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=10).eval()
    rewrite(model, "shuffle", include=["features.2.conv.0.0", "features.3.conv.2"], example_inputs=X, groups=4,
            allow_growth=True)
    units = [m for m in model.modules() if isinstance(m, nn.Sequential) and hasattr(m, "shuffle")]
    assert len(units) == 2
    widths = [(u.reduce.out_channels, u.expand.in_channels) for u in units]
    _prune(model, X, [model.classifier])
    assert model(X).shape == (1, 10)
    assert [(u.reduce.out_channels, u.expand.in_channels) for u in units] == widths
    for u in units:  # the pruned sides keep whole groups
        assert u.reduce.in_channels % u.reduce.groups == 0 and u.expand.out_channels % u.expand.groups == 0
    assert any(u.expand.out_channels < 24 for u in units)  # outputs behind the shuffle were still pruned


def test_unlocked_pruning_through_a_shuffle_is_refused():
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), to_shuffled(nn.Conv2d(16, 16, 1), 4),
                        nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1))
    with pytest.raises(CompressError, match="ChannelShuffle"):
        _prune(net, X, [net[4]], lock=False)


def test_locked_layers_find_the_producers():
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        to_shuffled(nn.Conv2d(16, 16, 1), 4), nn.Conv2d(16, 8, 3, padding=1))
    locked = locked_layers(net, X)
    assert len(locked) == 1 and locked[0] is net[3].reduce
    sep = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 32, 3, padding=1, groups=16), nn.Conv2d(32, 8, 1))
    locked = locked_layers(sep, X)
    assert {id(m) for m in locked} == {id(sep[0]), id(sep[1])}
    assert locked_layers(nn.Sequential(nn.Conv2d(3, 4, 3)), X) == []


def test_unabsorbed_permutes_are_locked_and_the_model_still_prunes():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    rewrite(model, "grouped", include=["layer1.*"], example_inputs=X, groups=2)
    permutes = [m for m in model.modules() if isinstance(m, ChannelPermute)]
    assert permutes  # the residual stream reaches two grouped convs: some permutes must stay
    sizes = [m.perm.numel() for m in permutes]
    _prune(model, X, [model.fc])
    assert [m.perm.numel() for m in permutes] == sizes
    assert model(X).shape == (1, 10)
    shuffles = [m for m in model.modules() if isinstance(m, ChannelShuffle)]
    assert not shuffles


@pytest.mark.parametrize("kind", [
    pytest.param("grouped", marks=pytest.mark.xfail(
        reason="compress.transforms.prune prunes through a ChannelPermute into a grouped conv (reported to the "
               "lead: tp_compat.locked_layers should lock permutes next to grouped convs as it does shuffles)",
        strict=False)),
    "separable", "shuffle", "dilated", "bottleneck"])
def test_project_prune_after_each_rewrite(kind):
    from compress.transforms.prune import prune

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    rewrite(model, kind, include=["conv1", "layer1.*", "layer2.0.*"], example_inputs=X, min_channels=3,
            **KINDS[kind])
    before = _params(model)
    prune(model, X, ratio=0.3)
    assert model(X).shape == (1, 10)
    assert _params(model) < 0.8 * before
