"""prune(): ratios, MACs targets, importances, protection of the classifier, argument validation."""
from __future__ import annotations

import copy
import inspect
import json

import pytest
import torch
import torch_pruning as tp
import torchvision
from torch import nn

from compress.analysis.dead import DeadChannel
from compress.errors import CompressError
from compress.transforms.prune.pruner import prune  # the package attribute is shadowed by the submodule once imported
from compress.transforms.prune.pruner import MACS_TOL, count_macs_params


class FakeAnalysis:
    """The analysis contract prune() reads: dead_channels(), stats(layer), correlation(layer)."""

    def __init__(self, dead=None, stats=None, corr=None) -> None:
        self._dead, self._stats, self._corr = dead or {}, stats or {}, corr or {}

    def dead_channels(self):
        return {k: dict(v) for k, v in self._dead.items()}

    def stats(self, layer):
        return dict(self._stats[layer])  # KeyError for layers without statistics, like the real one's error

    def correlation(self, layer):
        return self._corr[layer].clone()


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def _kept_filters(before: nn.Conv2d, after: nn.Conv2d) -> list[int]:
    """Original indices of the filters a pruned conv kept (matched by exact weights)."""
    flat = before.weight.detach().flatten(1)
    return sorted(int((flat == w[None]).all(1).nonzero()[0]) for w in
                  after.weight.detach().flatten(1))


def test_ratio_keeps_int_width_times_keep_fraction_and_protects_ends():
    model = torchvision.models.resnet18(num_classes=10)
    widths = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    x = torch.randn(1, 3, 32, 32)
    result = prune(model, x, ratio=0.3)
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            assert m.out_channels == int(widths[name] * 0.7), name
    assert model.conv1.in_channels == 3 and model.fc.out_features == 10 and result.ignored == ["fc"]
    assert result.channels_after["layer1.0.conv1"] == 44 and result.steps == 1 and result.ratio == 0.3
    assert (result.macs_after, result.params_after) == count_macs_params(model, x)
    assert 0.4 < result.macs_fraction < 0.6  # channel ratio 0.3 -> MACs about 0.7^2
    json.dumps(result.to_dict())  # plain data for the run record


def test_macs_target_is_met_within_tolerance():
    model = torchvision.models.resnet18(num_classes=10)
    result = prune(model, torch.randn(1, 3, 32, 32), macs_target=0.5)
    assert result.target_met and (1 - MACS_TOL) * 0.5 <= result.macs_fraction <= 0.5
    assert result.steps >= 2  # reached iteratively, importance re-estimated on the pruned model
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_round_to_per_layer_and_ignored_patterns():
    model = torchvision.models.resnet18(num_classes=10)
    prune(model, torch.randn(1, 3, 32, 32), ratio=0.3, round_to=8, per_layer={"layer1.*.conv1": 0.5},
          ignored_layers=["layer4.*"])
    assert model.layer1[0].conv1.out_channels == model.layer1[1].conv1.out_channels == 32
    assert model.layer4[0].conv1.out_channels == model.layer4[1].conv2.out_channels == 512
    widths = [m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths) and model.layer2[0].conv1.out_channels < 128


def test_activation_importance_prunes_the_weakest_channels():
    torch.manual_seed(0)
    model = TinyNet().eval()
    original = copy.deepcopy(model.conv1)
    mean_abs = torch.rand(16, dtype=torch.float64) + 1.0
    weakest = [1, 4, 6, 11, 13]
    mean_abs[weakest] = 0.01
    analysis = FakeAnalysis(stats={"conv1": {"mean_abs": mean_abs}})
    prune(model, torch.randn(1, 3, 8, 8), ratio=5 / 16, importance="activation", analysis=analysis)
    assert _kept_filters(original, model.conv1) == sorted(set(range(16)) - set(weakest))


def test_redundancy_importance_drops_one_of_a_correlated_pair():
    torch.manual_seed(0)
    model = TinyNet().eval()
    original = copy.deepcopy(model.conv1)
    corr = torch.eye(16, dtype=torch.float64) + 0.05 * torch.rand(16, 16, dtype=torch.float64)
    corr[3, 9] = corr[9, 3] = 0.99
    analysis = FakeAnalysis(corr={"conv1": corr})
    prune(model, torch.randn(1, 3, 8, 8), ratio=1 / 16, importance="redundancy", analysis=analysis,
          per_layer={"conv2": 0.0})
    removed = set(range(16)) - set(_kept_filters(original, model.conv1))
    assert len(removed) == 1 and removed <= {3, 9}


def test_dead_channels_rank_first_even_with_large_weights():
    torch.manual_seed(0)
    model = TinyNet().eval()
    original = copy.deepcopy(model.conv1)
    with torch.no_grad():
        model.conv1.weight[7] *= 100.0  # by magnitude the most important filter ...
    original.weight.data.copy_(model.conv1.weight)
    analysis = FakeAnalysis(dead={"conv1": {7: DeadChannel("apoz", None, 0.999)}})  # ... but the analysis says dead
    prune(model, torch.randn(1, 3, 8, 8), ratio=1 / 16, analysis=analysis, remove_dead=False)
    assert 7 not in _kept_filters(original, model.conv1)


def test_taylor_importance_uses_calibration_gradients():
    torch.manual_seed(0)
    model = TinyNet()
    calib = [(torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))) for _ in range(2)]
    prune(model, torch.randn(1, 3, 8, 8), ratio=0.25, importance="taylor", calib=calib)
    assert model.conv1.out_channels == 12 and all(p.grad is None for p in model.parameters())


def test_training_mode_is_restored_and_tp_defaults_stay_clean():
    model = torchvision.models.regnet_x_400mf(num_classes=10)  # grouped convs register channel groups in tp
    model.train()
    model.stem[1].eval()  # a frozen BN must stay frozen
    prune(model, torch.randn(1, 3, 32, 32), ratio=0.2)
    assert model.training and model.trunk_output.training and not model.stem[1].training
    defaults = inspect.signature(tp.pruner.BasePruner.__init__).parameters
    assert all(defaults[k].default == {} for k in ("in_channel_groups", "out_channel_groups", "num_heads"))


def test_dead_removal_then_ratio_counts_from_original_widths():
    torch.manual_seed(0)
    model = TinyNet().eval()
    model.bn1.weight.data[[2, 3]] = 0.0
    model.bn1.bias.data[[2, 3]] = -1.0
    analysis = FakeAnalysis(dead={"conv1": {2: DeadChannel("zero_gamma", 0.0), 3: DeadChannel("zero_gamma", 0.0)}})
    result = prune(model, torch.randn(1, 3, 8, 8), ratio=0.25, analysis=analysis, calib=[torch.randn(4, 3, 8, 8)])
    assert result.dead.channels_removed == 2 and model.conv1.out_channels == 12  # int(16 * 0.75), dead ones first


@pytest.mark.parametrize("kwargs, message", [
    ({"ratio": 1.5}, "prune.ratio"),
    ({"macs_target": 0.0}, "prune.macs_target"),
    ({"ratio": 0.3, "macs_target": 0.5}, "not both"),
    ({}, "nothing to do"),
    ({"ratio": 0.3, "importance": "fisher"}, "prune.importance"),
    ({"ratio": 0.3, "importance": "activation"}, "needs an analysis"),
    ({"ratio": 0.3, "importance": "taylor"}, "calibration"),
    ({"ratio": 0.3, "ignored_layers": ["nope.*"]}, "matches no module"),
    ({"ratio": 0.3, "per_layer": {"conv1": 1.0}}, "prune.per_layer.conv1"),
])
def test_bad_arguments_raise_compress_error(kwargs, message):
    with pytest.raises(CompressError, match=message):
        prune(TinyNet(), torch.randn(1, 3, 8, 8), **kwargs)


def test_stale_analysis_is_refused():
    analysis = FakeAnalysis(dead={"conv1": {40: DeadChannel("zero_gamma", 0.0)}})  # conv1 has 16 channels
    with pytest.raises(CompressError, match="re-run 'analyze'"):
        prune(TinyNet(), torch.randn(1, 3, 8, 8), ratio=0.3, analysis=analysis)


def test_config_object_and_keyword_shorthand_prune_alike():
    from compress.transforms.prune import PruneConfig

    a, b = TinyNet(), TinyNet()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 8, 8)
    ra = prune(a, x, ratio=0.25, round_to=2)
    rb = prune(b, x, PruneConfig(ratio=0.25, round_to=2))
    assert ra.channels_after == rb.channels_after and ra.macs_after == rb.macs_after
    with pytest.raises(CompressError, match="not both"):
        prune(TinyNet(), x, PruneConfig(ratio=0.25), ratio=0.3)
    with pytest.raises(CompressError, match="unknown option 'rato'"):
        prune(TinyNet(), x, rato=0.3)


class _DuplicatedNet(nn.Module):
    """conv1 -> ReLU -> conv2 -> ReLU -> mean -> fc, where conv1's channels 9 and 12 are positive multiples of its
    channels 3 and 5 (so after the ReLU they are exact linear combinations of kept channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()
        self.fc = nn.Linear(16, 10)
        with torch.no_grad():
            for copy_, source, scale in ((9, 3, 2.0), (12, 5, 0.5)):
                self.conv1.weight[copy_] = scale * self.conv1.weight[source]
                self.conv1.bias[copy_] = scale * self.conv1.bias[source]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu2(self.conv2(self.relu1(self.conv1(x)))).mean(dim=(2, 3)))


def test_reconstruction_importance_drops_rebuildable_channels_and_the_refit_is_exact():
    """The channels the kept ones can rebuild exactly go first; the least-squares refit of the consumer then
    reproduces the original outputs on inputs neither the analysis nor the fit saw."""
    import compress

    torch.manual_seed(0)
    model = _DuplicatedNet().eval()
    original = copy.deepcopy(model)
    calib = [torch.randn(32, 3, 8, 8) for _ in range(4)]
    held_out = torch.randn(64, 3, 8, 8)
    analysis = compress.analyze(model, calib, verbose=False)
    prune(model, calib[0][:1], ratio=2 / 16, importance="reconstruction", analysis=analysis,
          per_layer={"conv2": 0.0}, remove_dead=False, verbose=False)
    removed = set(range(16)) - set(_kept_filters(original.conv1, model.conv1))
    assert len(removed) == 2 and len(removed & {3, 9}) == 1 and len(removed & {5, 12}) == 1, removed
    with torch.no_grad():
        ref = original(held_out)
        before = (model(held_out) - ref).norm() / ref.norm()
    compress.reconstruct(model, original, calib, ridge=1e-10, verbose=False)
    with torch.no_grad():
        after = (model(held_out) - ref).norm() / ref.norm()
    assert before > 1e-2 and after < 1e-4, (float(before), float(after))
    # magnitude alone keeps both copies of the larger filter: the doubled channel 9 is never its first choice
    by_l2 = copy.deepcopy(original)
    prune(by_l2, calib[0][:1], ratio=2 / 16, importance="l2", per_layer={"conv2": 0.0}, verbose=False)
    assert 9 in _kept_filters(original.conv1, by_l2.conv1)


def test_reconstruction_importance_ranks_a_group_consumed_by_a_linear():
    """conv2's channels feed the classifier (a Linear, 2-D weight): its consumer energy must be computed too, not
    raise and leave the group skipped (the small ResNet's last stage once stayed unpruned that way)."""
    import compress

    torch.manual_seed(0)
    model = _DuplicatedNet().eval()
    calib = [torch.randn(32, 3, 8, 8) for _ in range(4)]
    analysis = compress.analyze(model, calib, verbose=False)
    result = prune(model, calib[0][:1], ratio=0.25, importance="reconstruction", analysis=analysis,
                   remove_dead=False, verbose=False)
    assert result.skipped == []
    assert (model.conv1.out_channels, model.conv2.out_channels, model.fc.in_features) == (12, 12, 12)
