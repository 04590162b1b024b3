"""Lossless dead-channel removal: planted constant channels go, logits stay (vs a deep-copied reference)."""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from compress.analysis.dead import DeadChannel
from compress.transforms.prune.dead import remove_dead_channels
from compress.transforms.prune.tp_compat import swap_shufflenet_blocks

REL_TOL = 1e-4  # the task's bound on the relative logit change of an exact removal


class FakeAnalysis:
    """Just the analysis contract :func:`remove_dead_channels` reads: ``dead_channels()``."""

    def __init__(self, dead: dict[str, dict[int, DeadChannel]]) -> None:
        self._dead = dead

    def dead_channels(self) -> dict[str, dict[int, DeadChannel]]:
        return {layer: dict(ch) for layer, ch in self._dead.items()}


def _const(value: float, kind: str = "zero_gamma") -> DeadChannel:
    return DeadChannel(kind, value)


def _randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics so folds into running means are actually exercised."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
    return model.eval()


def _plant(bn: nn.BatchNorm2d, idxs: list[int], beta: float) -> None:
    """gamma = 0 makes the BN output the constant beta; a ReLU after it turns beta < 0 into 0."""
    bn.weight.data[idxs] = 0.0
    bn.bias.data[idxs] = beta


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


def _widths(model: nn.Module, layers: list[str]) -> int:
    return sum(model.get_submodule(name).out_channels for name in layers)


class SmallNet(nn.Module):
    """conv3x3-BN-ReLU -> conv1x1-BN-ReLU -> conv3x3-BN-ReLU -> global pool -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.conv3, self.bn3 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean(dim=(2, 3)))


def _check_exact(model: nn.Module, analysis: FakeAnalysis, x: torch.Tensor, planted: int, **kw) -> object:
    ref = copy.deepcopy(model)
    layers = list(analysis.dead_channels())
    before = _widths(model, layers)
    report = remove_dead_channels(model, x[:1], analysis, probe=[x], **kw)
    with torch.no_grad():
        assert _rel(model(x), ref(x)) <= REL_TOL
    assert before - _widths(model, layers) == planted
    assert report.channels_removed == planted and not report.skipped
    assert all(r.exact for r in report.removed) and report.error <= REL_TOL
    return report


def test_zero_and_constant_channels_into_1x1_and_linear_are_exact():
    model = _randomize_bn(SmallNet())
    _plant(model.bn1, [2, 7], -1.0)  # zero into the 1x1 conv2
    _plant(model.bn1, [4], 0.7)  # non-zero constant into the 1x1 conv2 (folds into bn2's running mean)
    _plant(model.bn3, [5], 0.3)  # non-zero constant into pooling + Linear (folds into fc.bias)
    analysis = FakeAnalysis({"conv1": {2: _const(0.0), 7: _const(0.0), 4: _const(0.7)}, "conv3": {5: _const(0.3)}})
    _check_exact(model, analysis, torch.randn(4, 3, 16, 16), planted=4)
    assert model.conv2.bias is None  # the shift went into bn2, so the architecture only lost channels
    assert model.conv1.out_channels == 13 and model.conv3.out_channels == 15 and model.fc.in_features == 15


def test_nonzero_constant_into_padded_3x3_is_accepted_only_within_tol():
    x = torch.randn(4, 3, 16, 16)
    model = _randomize_bn(SmallNet())
    _plant(model.bn2, [3], 0.5)  # constant 0.5 into the zero-padded 3x3 conv3: borders differ after folding
    analysis = FakeAnalysis({"conv2": {3: _const(0.5)}})

    strict = copy.deepcopy(model)
    report = remove_dead_channels(strict, x[:1], analysis, probe=[x], tol=1e-9)
    assert report.channels_removed == 0 and "border fold error" in report.skipped[0].reason
    assert strict.conv2.out_channels == 16

    ref = copy.deepcopy(model)
    report = remove_dead_channels(model, x[:1], analysis, probe=[x], tol=1.0)
    assert model.conv2.out_channels == 15 and not report.removed[0].exact
    with torch.no_grad():
        measured = _rel(model(x), ref(x))
    assert 0.0 < measured
    assert report.removed[0].fold_error == pytest.approx(measured, rel=1e-3)


def test_non_constant_or_unvalued_channels_are_skipped_with_reasons():
    x = torch.randn(4, 3, 16, 16)
    model = _randomize_bn(SmallNet())
    analysis = FakeAnalysis({"conv1": {1: DeadChannel("apoz", None, 0.995), 3: _const(0.0, "constant")}})
    report = remove_dead_channels(model, x[:1], analysis, probe=[x])  # channel 3 is not really constant
    reasons = {s.channels[0]: s.reason for s in report.skipped}
    assert "not constant" in reasons[1] and "not constant" in reasons[3]
    assert model.conv1.out_channels == 16 and report.channels_removed == 0


class ResidualNet(nn.Module):
    """stem conv-BN-ReLU, one residual block (conv-BN-ReLU-conv-BN + identity, ReLU), pool, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0, self.bn0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.conv0(x)))
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.relu(x + y).mean(dim=(2, 3)))


def test_residual_coupled_channel_needs_every_source_constant():
    x = torch.randn(4, 3, 12, 12)
    model = _randomize_bn(ResidualNet())
    _plant(model.bn2, [6], 0.0)  # only the block's branch is zero; the identity still carries channel 6
    report = remove_dead_channels(model, x[:1], FakeAnalysis({"conv2": {6: _const(0.0)}}), probe=[x])
    assert report.channels_removed == 0 and "not constant" in report.skipped[0].reason

    model = _randomize_bn(ResidualNet())
    _plant(model.bn0, [6], -1.0)  # stem channel 6 is 0 after its ReLU ...
    _plant(model.bn2, [6], 0.0)  # ... and the branch adds 0: the residual stream's channel 6 is 0 everywhere
    analysis = FakeAnalysis({"conv0": {6: _const(0.0)}, "conv2": {6: _const(0.0)}})
    report = _check_exact(model, analysis, x, planted=2)
    assert report.removed[0].coupled == ["conv2"] and report.removed[0].coupled_dead == {"conv2": [6]}
    assert model.conv0.out_channels == model.conv2.out_channels == model.conv1.in_channels == 7


class DenseNet(nn.Module):
    """DenseNet-style pre-activation: the concat of stem and a conv feeds BN -> ReLU -> 1x1 conv consumers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1)
        self.norm_a, self.conv_a = nn.BatchNorm2d(8), nn.Conv2d(8, 4, 3, padding=1)
        self.norm_b, self.conv_b = nn.BatchNorm2d(12), nn.Conv2d(12, 6, 1)
        self.norm_c, self.fc = nn.BatchNorm2d(12), nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv0(x)
        x = torch.cat([x, self.conv_a(torch.relu(self.norm_a(x)))], dim=1)
        y = self.conv_b(torch.relu(self.norm_b(x)))
        return self.fc(torch.relu(self.norm_c(x)).mean(dim=(2, 3))) + y.mean()


def test_densenet_style_preactivation_consumers_fold_through_bn_and_relu():
    model = _randomize_bn(DenseNet())
    with torch.no_grad():  # zero filters: channel 1 of conv_a is its bias (0.4), channel 3 is 0
        model.conv_a.weight[[1, 3]] = 0.0
        model.conv_a.bias[[1, 3]] = torch.tensor([0.4, 0.0])
    analysis = FakeAnalysis({"conv_a": {1: _const(0.4, "zero_filter"), 3: _const(0.0, "zero_filter")}})
    _check_exact(model, analysis, torch.randn(4, 3, 12, 12), planted=2)
    assert model.norm_b.num_features == model.conv_b.in_channels == model.fc.in_features == 10


def test_resnet18_zero_channels_into_3x3_convs():
    model = _randomize_bn(torchvision.models.resnet18(num_classes=10))
    _plant(model.layer1[0].bn1, [1, 5, 9], -0.3)
    _plant(model.layer3[1].bn1, [0, 100], -1.0)
    analysis = FakeAnalysis({"layer1.0.conv1": {i: _const(0.0) for i in (1, 5, 9)},
                             "layer3.1.conv1": {i: _const(0.0) for i in (0, 100)}})
    _check_exact(model, analysis, torch.randn(2, 3, 32, 32), planted=5)
    assert model.layer1[0].conv2.in_channels == 61 and model.layer3[1].conv2.in_channels == 254


def test_resnet50_constant_channels_into_1x1_convs():
    model = _randomize_bn(torchvision.models.resnet50(num_classes=10))
    _plant(model.layer1[0].bn2, [2, 7], 0.4)  # conv2 -> bn2 -> relu -> conv3 (1x1): constant 0.4
    _plant(model.layer3[2].bn2, [11], 0.9)
    analysis = FakeAnalysis({"layer1.0.conv2": {2: _const(0.4), 7: _const(0.4)},
                             "layer3.2.conv2": {11: _const(0.9)}})
    _check_exact(model, analysis, torch.randn(2, 3, 32, 32), planted=3)
    assert model.layer1[0].conv3.in_channels == 62 and model.layer1[0].conv3.bias is None


def test_shufflenet_dead_channels_through_permuted_shuffles():
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10)
    swap_shufflenet_blocks(model)
    _randomize_bn(model)
    _plant(model.stage2[1].branch2[1], [3], -1.0)  # inside a branch: zero into the depthwise conv
    _plant(model.stage2[0].branch1[3], [0, 5], -1.0)  # pass-through channels: travel through permutes and splits
    analysis = FakeAnalysis({"stage2.1.branch2.0": {3: _const(0.0)}, "stage2.0.branch1.2": {0: _const(0.0),
                                                                                              5: _const(0.0)}})
    _check_exact(model, analysis, torch.randn(2, 3, 32, 32), planted=3)
    assert model.stage2[0].branch1[2].out_channels == 22


def test_classifier_outputs_are_never_removed():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        model[2].weight[2] = 0.0
        model[2].bias[2] = -1.0  # output class 2 is always 0
    x = torch.randn(2, 3, 8, 8)
    report = remove_dead_channels(model, x[:1], FakeAnalysis({"2": {2: _const(0.0, "zero_filter")}}), probe=[x])
    assert report.channels_removed == 0 and report.skipped[0].reason == "reaches the model output"
    assert model(x).shape == (2, 5)


def test_with_the_real_analysis_planted_channels_are_removed():
    from compress.analysis import analyze

    model = _randomize_bn(torchvision.models.resnet18(num_classes=10))
    _plant(model.layer2[0].bn1, [3, 4], -0.5)
    batches = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    analysis = analyze(model, batches, verbose=False)
    planted = {3, 4}
    assert planted <= set(analysis.dead_channels()["layer2.0.conv1"])
    ref = copy.deepcopy(model)
    report = remove_dead_channels(model, batches[0][:1], analysis, probe=batches)
    removed = {c for r in report.removed if r.layer == "layer2.0.conv1" for c in r.channels}
    assert planted <= removed
    with torch.no_grad():  # constants the analysis found on these batches are exact on these batches
        assert max(_rel(model(x), ref(x)) for x in batches) <= REL_TOL


def test_a_layer_whose_every_channel_is_constant_keeps_one():
    """On few calibration images a narrow layer can look wholly constant: removing all of it would leave a
    conv with zero filters (seen on mobilenet_v3_small's SE squeeze convs), so one channel must stay."""
    model = _randomize_bn(SmallNet())
    _plant(model.bn2, list(range(16)), 0.4)  # every conv2 channel constant, into the padded 3x3 conv3
    analysis = FakeAnalysis({"conv2": {i: _const(0.4) for i in range(16)}})
    x = torch.randn(4, 3, 16, 16)
    ref = copy.deepcopy(model)
    report = remove_dead_channels(model, x[:1], analysis, probe=[x], tol=1.0)
    assert model.conv2.out_channels >= 1 and model.conv3.in_channels == model.conv2.out_channels
    assert any("every output channel of conv2" in s.reason for s in report.skipped)
    with torch.no_grad():
        assert torch.isfinite(model(x)).all() and _rel(model(x), ref(x)) <= 1.0


class GroupedNet(nn.Module):
    """conv3x3-BN-ReLU -> grouped conv3x3 (groups 4)-BN-ReLU -> 1x1 -> pool -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(self.conv3(x).mean(dim=(2, 3)))


def test_outputs_of_a_grouped_conv_are_not_removed():
    """Removing 1 of 16 outputs of a groups=4 conv would leave 15 filters that 4 groups cannot divide (a
    balanced removal, one position per group, is allowed: tests/transforms/test_prune_compat.py)."""
    model = _randomize_bn(GroupedNet())
    _plant(model.bn2, [3], -1.0)  # zero after the ReLU, into the 1x1 conv3: would be exact if allowed
    analysis = FakeAnalysis({"conv2": {3: _const(0.0)}})
    x = torch.randn(4, 3, 16, 16)
    report = remove_dead_channels(model, x[:1], analysis, probe=[x])
    assert model.conv2.out_channels == 16 and report.channels_removed == 0
    assert any("groups of grouped conv conv2" in s.reason for s in report.skipped)
    assert torch.isfinite(model(x)).all()


def test_a_group_torch_pruning_fails_on_is_skipped_with_the_reason(monkeypatch):
    import torch_pruning as tp

    model = _randomize_bn(SmallNet())
    _plant(model.bn1, [2], -1.0)
    _plant(model.bn3, [5], 0.3)
    get_group = tp.DependencyGraph.get_pruning_group

    def failing(self, module, fn, idxs):  # like tp on Res2Net's split groups: indices out of range
        if module is model.conv1:
            raise IndexError("planted: index 17 is out of bounds for dimension 0 with size 14")
        return get_group(self, module, fn, idxs)

    monkeypatch.setattr(tp.DependencyGraph, "get_pruning_group", failing)
    report = remove_dead_channels(model, torch.randn(1, 3, 16, 16), FakeAnalysis(
        {"conv1": {2: _const(0.0)}, "conv3": {5: _const(0.3)}}), probe=[torch.randn(4, 3, 16, 16)])
    assert [(s.layer, s.channels) for s in report.skipped] == [("conv1", [2])]
    assert "torch-pruning failed on its group: IndexError: planted" in report.skipped[0].reason
    assert model.conv1.out_channels == 16 and model.conv3.out_channels == 15  # the other channel is removed


class _Res2Net(nn.Module):
    """A stem and two timm Res2Net blocks (width 3, scale 4: conv1's output is split over three 3x3 convs)."""

    def __init__(self) -> None:
        super().__init__()
        from timm.models.res2net import Bottle2neck

        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.blocks = nn.Sequential(*(Bottle2neck(32, 8, base_width=26, scale=4, act_layer=nn.ReLU,
                                                  norm_layer=nn.BatchNorm2d) for _ in range(2)))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def test_split_block_that_torch_pruning_breaks_is_rolled_back_and_named():
    """torch-pruning 1.6 loses the split offsets of Res2Net's conv1 -> split -> convs: removing conv1's dead
    channels leaves a conv that no longer runs (a raw RuntimeError before the guard). Now each such layer keeps its
    channels, skipped with the reason, and the model's outputs are unchanged (held-out inputs)."""
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = _Res2Net().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.uniform_(m.bias, -0.1, 0.1)
        for block in model.blocks:
            block.bn1.weight[[0, 5, 9]] = 0  # structurally dead conv1 outputs, spread over the split
    import compress

    reference = copy.deepcopy(model)
    probe, held_out = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    analysis = compress.analyze(model, [probe], verbose=False)  # a real analysis finds the zero-gamma channels
    assert all(set(analysis.dead_channels()[f"blocks.{i}.conv1"]) >= {0, 5, 9} for i in range(2))
    report = remove_dead_channels(model, probe[:1], analysis, probe=[probe])
    broken = [s for s in report.skipped if "torch-pruning" in s.reason or "fails" in s.reason]
    assert {s.layer for s in broken} == {"blocks.0.conv1", "blocks.1.conv1"}, report.skipped
    assert any("at module 'blocks." in s.reason for s in broken)  # the reason names where it broke
    with torch.no_grad():
        out, ref = model(held_out), reference(held_out)
    assert torch.isfinite(out).all() and out.shape == (8, 10)
    assert ((out - ref).norm() / ref.norm()).item() < REL_TOL
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert p.shape == q.shape, name  # nothing half-pruned is left behind


def test_a_spent_time_limit_leaves_the_remaining_layers_in_place_with_the_reason():
    """On random weights or few images tens of thousands of channels can look constant (timm's NF nets): the pass
    stops at its time limit, records what it did not examine, and the model is left exactly as it was there."""
    model = _randomize_bn(SmallNet())
    _plant(model.bn1, [2, 7], -1.0)
    _plant(model.bn3, [5], 0.3)
    analysis = FakeAnalysis({"conv1": {2: _const(0.0), 7: _const(0.0)}, "conv3": {5: _const(0.3)}})
    x = torch.randn(4, 3, 16, 16)
    reference = copy.deepcopy(model.state_dict())
    report = remove_dead_channels(model, x[:1], analysis, probe=[x], time_limit_s=0.0)
    assert report.removed == []
    assert {(s.layer, tuple(s.channels)) for s in report.skipped} == {("conv1", (2, 7)), ("conv3", (5,))}
    assert all("ran out of its share of the prune time budget" in s.reason for s in report.skipped)
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())
    untimed = remove_dead_channels(model, x[:1], analysis, probe=[x], time_limit_s=None)
    assert len(untimed.removed) == 2 and model.conv1.out_channels == 14  # the same call without a limit removes them
