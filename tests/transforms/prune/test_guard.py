"""Guarded group pruning: a group torch-pruning fails on is rolled back exactly and skipped; the rest prunes."""
from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from torch import nn

from compress.transforms.prune import guard as guard_module
from compress.transforms.prune import tp_compat
from compress.transforms.prune.guard import GroupGuard, SkippedGroup
from compress.transforms.prune.pruner import prune
from compress.transforms.prune.tp_compat import build_graph, prune_group
from unprunable_models import FixedSplitConv, MixNet


class SplitNet(nn.Module):
    """stem -> c1 (16) -> split [8, 8] -> two convs -> cat -> c3 -> pool -> Linear: a group through a split.

    The split sizes follow the convs' widths, so the model stays valid when pruning shrinks the halves unequally.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c1, self.bn1 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.a, self.b = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, padding=1)
        self.c3, self.bn3 = nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.relu(self.bn1(self.c1(x)))
        x1, x2 = torch.split(x, [self.a.in_channels, x.shape[1] - self.a.in_channels], dim=1)
        x = torch.cat((self.a(x1), self.b(x2)), dim=1)
        return self.head(torch.relu(self.bn3(self.c3(x))).mean(dim=(2, 3)))


def _randomise(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def _assert_identical(model: nn.Module, ref: nn.Module) -> None:
    """Same tensors bit for bit (parameters and buffers) and the same channel attributes in every module."""
    got, want = model.state_dict(), ref.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].shape == want[key].shape and torch.equal(got[key], want[key]), key
    for (name, m), (_, r) in zip(model.named_modules(), ref.named_modules()):
        for attr in ("in_channels", "out_channels", "groups", "num_features", "in_features", "out_features"):
            assert getattr(m, attr, None) == getattr(r, attr, None), f"{name}.{attr}"


def _out_group(graph: tp.DependencyGraph, layer: nn.Module, idxs: list[int]):
    return graph.get_pruning_group(layer, tp.prune_conv_out_channels, idxs)


def _guarded() -> tuple[SplitNet, torch.Tensor, SplitNet, tp.DependencyGraph, GroupGuard]:
    """A SplitNet, its input, a deep-copied reference, its graph and a guard."""
    model = _randomise(SplitNet())
    x = torch.randn(1, 3, 16, 16)
    ref = copy.deepcopy(model)
    return model, x, ref, build_graph(model, x), GroupGuard(model, x)


def _fail_after_first_layer(monkeypatch, root: nn.Module) -> None:
    """Pruning a group rooted at ``root`` changes its first layer, then raises (a tp failure half-way)."""
    real = guard_module.prune_group

    def failing(graph, group):
        if group[0].dep.target.module is not root:
            return real(graph, group)
        dep, idxs = group[0]
        dep(idxs)  # the root conv loses its channels ...
        raise IndexError("planted failure half-way through the group")  # ... and the rest never happens

    monkeypatch.setattr(guard_module, "prune_group", failing)


def test_a_group_failing_half_way_is_rolled_back_bit_identically(monkeypatch):
    model, x, ref, graph, guard = _guarded()
    split = next(n for n in graph.module2node.values() if n.type == tp.ops.OPTYPE.SPLIT).module
    split_before = (list(split.split_sizes), list(split.offsets))
    _fail_after_first_layer(monkeypatch, model.c1)

    assert not guard.prune(graph, _out_group(graph, model.c1, [0, 9, 10]))

    _assert_identical(model, ref)
    assert (split.split_sizes, split.offsets) == split_before  # the graph's own state is back too
    assert guard.skipped == [SkippedGroup("c1", guard.skipped[0].reason)]
    assert "IndexError: planted failure half-way" in guard.skipped[0].reason
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_after_a_rollback_the_same_graph_prunes_like_a_fresh_one(monkeypatch):
    model, x, fresh, graph, guard = _guarded()
    _fail_after_first_layer(monkeypatch, model.c1)
    assert not guard.prune(graph, _out_group(graph, model.c1, [0, 9, 10]))
    monkeypatch.undo()

    # the rest prunes: the split group (one channel from each half) and then the stem group
    assert guard.prune(graph, _out_group(graph, model.c1, [0, 9, 10]))
    assert guard.prune(graph, _out_group(graph, model.stem, [1, 2]))
    fresh_graph = build_graph(fresh, x)
    prune_group(fresh_graph, _out_group(fresh_graph, fresh.c1, [0, 9, 10]))
    prune_group(fresh_graph, _out_group(fresh_graph, fresh.stem, [1, 2]))

    _assert_identical(model, fresh)
    assert (model.c1.out_channels, model.a.in_channels, model.b.in_channels, model.c1.in_channels) == (13, 7, 6, 6)
    assert len(guard.skipped) == 1


def test_a_group_that_breaks_the_forward_pass_is_rolled_back_and_the_rest_prunes():
    model = _randomise(MixNet())
    x = torch.randn(1, 3, 16, 16)
    ref = copy.deepcopy(model)

    result = prune(model, x, ratio=0.3)

    # the stem's channels feed the fixed split, coupled with one depthwise conv per part (tp roots each group
    # there): pruning either breaks the forward pass, so both stay whole
    assert sorted(s.root for s in result.skipped) == ["mix.convs.0", "mix.convs.1"]
    for skipped in result.skipped:
        assert "the pruned model fails: RuntimeError: split_with_sizes" in skipped.reason
        assert "at module 'mix'" in skipped.reason
    for name in ("stem", "bn0", "mix.convs.0", "mix.convs.1"):
        for key, value in ref.get_submodule(name).state_dict().items():
            assert torch.equal(model.get_submodule(name).state_dict()[key], value), f"{name}.{key}"
    assert model.pw1.in_channels == 16
    assert (model.pw1.out_channels, model.pw2.in_channels) == (int(24 * 0.7), int(24 * 0.7))  # the rest prunes
    assert result.macs_after < result.macs_before
    with torch.no_grad():
        out = model(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert result.to_dict()["skipped"] == [{"root": s.root, "reason": s.reason} for s in result.skipped]


def test_importance_and_group_construction_failures_skip_only_their_group(monkeypatch):
    model = _randomise(SplitNet())
    x = torch.randn(1, 3, 16, 16)
    estimate = tp.pruner.BasePruner.estimate_importance
    get_group = tp.DependencyGraph.get_pruning_group

    def failing_importance(self, group):
        if group[0].dep.target.module is model.stem:
            raise IndexError("planted importance failure")
        return estimate(self, group)

    def failing_group(self, module, fn, idxs):  # only the pruning group (not the full one tp ranks with)
        if module is model.c3 and len(idxs) < module.out_channels:
            raise RuntimeError("planted group failure")
        return get_group(self, module, fn, idxs)

    monkeypatch.setattr(tp.pruner.BasePruner, "estimate_importance", failing_importance)
    monkeypatch.setattr(tp.DependencyGraph, "get_pruning_group", failing_group)
    result = prune(model, x, ratio=0.3)

    reasons = {s.root: s.reason for s in result.skipped}
    assert reasons.keys() == {"stem", "c3"}
    assert "importance estimation raised IndexError: planted importance failure" in reasons["stem"]
    assert "could not build the group: RuntimeError: planted group failure" in reasons["c3"]
    assert (model.stem.out_channels, model.c3.out_channels) == (8, 16)
    assert model.c1.out_channels < 16  # the other group pruned
    with torch.no_grad():
        assert model(x).shape == (1, 10)


def test_a_non_finite_output_is_a_failed_check(monkeypatch):
    model, x, ref, graph, guard = _guarded()
    real = guard_module.prune_group

    def poisoning(graph, group):
        real(graph, group)
        model.bn0.running_var.data[0] = -1.0  # in the group; sqrt of a negative variance: NaN outputs

    monkeypatch.setattr(guard_module, "prune_group", poisoning)
    assert not guard.prune(graph, _out_group(graph, model.stem, [0]))
    assert "not finite" in guard.skipped[0].reason
    _assert_identical(model, ref)


def test_other_exceptions_roll_back_and_propagate(monkeypatch):
    model, x, ref, graph, guard = _guarded()

    def interrupted(graph, group):
        dep, idxs = group[0]
        dep(idxs)
        raise KeyboardInterrupt

    monkeypatch.setattr(guard_module, "prune_group", interrupted)
    with pytest.raises(KeyboardInterrupt):
        guard.prune(graph, _out_group(graph, model.stem, [0, 1]))
    _assert_identical(model, ref)
    assert guard.skipped == []


def test_an_unreachable_macs_target_states_the_shortfall_and_the_skipped_groups():
    model = _randomise(MixNet())
    x = torch.randn(1, 3, 16, 16)
    with pytest.warns(UserWarning, match=r"MACs target 0.2 not reached \(0\.\d+ of the original, 0\.\d+ short, "
                                         r"after \d+ steps, 2 groups skipped\)"):
        result = prune(model, x, macs_target=0.2)  # the stem (~30% of the MACs) cannot shrink: its group is skipped
    assert result.target_met is False
    assert result.shortfall == pytest.approx(result.macs_fraction - 0.2, abs=1e-6) and result.shortfall > 0
    assert sorted(s.root for s in result.skipped) == ["mix.convs.0", "mix.convs.1"]
    assert result.to_dict()["shortfall"] == result.shortfall


def test_a_rolled_back_group_restores_the_children_its_pruner_cut(monkeypatch):
    """tp's MultiheadAttention pruner also cuts ``out_proj`` (a child the group does not list): a failing group
    that reaches an attention layer must restore it too, or the next check fails on an attention left half-cut
    (torchvision ViT raised ``mat1 and mat2 shapes cannot be multiplied`` out of prune). The group is made to
    fail as it did before compress kept ViT's ``hidden_dim`` up to date."""
    from torchvision.models.vision_transformer import VisionTransformer

    monkeypatch.setattr(tp_compat, "WIDTH_ATTRIBUTES", ())
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=64,
                              mlp_dim=128, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    result = prune(model, x[:1], ratio=0.3, importance="l2")
    # the residual (hidden) group breaks the patch reshape: skipped with that reason, attention left whole
    assert any("invalid for input" in s.reason for s in result.skipped)
    for layer in model.encoder.layers:
        attention = layer.self_attention
        assert attention.out_proj.weight.shape == (64, 64) and attention.in_proj_weight.shape == (192, 64)
    assert result.macs_after < result.macs_before  # the MLP hidden layers still prune
    assert model(x).shape == (2, 10)


def test_a_runaway_group_construction_is_stopped_once_and_skipped(monkeypatch):
    """tp's group construction loops on some index maps (timm's global-context blocks): the guard stops it after
    GROUP_BUDGET_S, skips that group with the reason and does not build it again; the rest prunes."""
    model = _randomise(SplitNet())
    x = torch.randn(1, 3, 16, 16)
    get_group = tp.DependencyGraph.get_pruning_group
    spins = []

    def runaway(self, module, fn, idxs):
        group = get_group(self, module, fn, idxs)
        if module is model.c1:
            spins.append(module)
            while True:  # pure Python, like tp's index-map loop: the budget's exception lands here
                pass
        return group

    monkeypatch.setattr(tp_compat, "GROUP_BUDGET_S", 0.3)
    monkeypatch.setattr(tp.DependencyGraph, "get_pruning_group", runaway)
    result = prune(model, x, ratio=0.3, time_budget_s=60)

    reasons = {s.root: s.reason for s in result.skipped}
    assert list(reasons) == ["c1"]
    assert reasons["c1"] == "torch-pruning did not finish building the group in 0.3 s (its index maps grow on every " \
                            "turn of a cycle)"
    assert len(spins) == 1  # BasePruner's constructor met it first; the pruner's own pass reused the verdict
    assert (model.c1.out_channels, model.bn1.num_features) == (16, 16)
    assert model.c3.out_channels < 16 and model.stem.out_channels < 8  # the other groups pruned
    with torch.no_grad():
        assert model(x).shape == (1, 10)


class _MixStack(nn.Module):
    """stem, then three times (fixed split conv -> 1x1 expand -> 1x1 reduce): groups that fail the check (each
    split's producer) between groups that prune, more than one batch of them."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.mixes = nn.ModuleList(FixedSplitConv(16) for _ in range(3))
        self.expand = nn.ModuleList(nn.Conv2d(16, 24, 1) for _ in range(3))
        self.reduce = nn.ModuleList(nn.Conv2d(24, 16, 1) for _ in range(3))
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        for mix, expand, reduce in zip(self.mixes, self.expand, self.reduce):
            x = torch.relu(reduce(torch.relu(expand(mix(x)))))
        return self.head(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("every", [2, 3, 8, 64])
def test_checking_every_few_groups_gives_the_group_by_group_result(monkeypatch, every):
    """One check per ``every`` groups, a failed check replaying its batch one by one: the same pruned model
    (bit for bit), the same skipped groups and reasons as a check after every group."""
    torch.manual_seed(0)
    model = _randomise(_MixStack())
    x = torch.randn(1, 3, 16, 16)
    by_one, batched = copy.deepcopy(model), copy.deepcopy(model)
    checks = {1: 0, every: 0}
    real = GroupGuard.problem

    def counted(self):
        checks[guard_module.CHECK_EVERY] += 1
        return real(self)

    monkeypatch.setattr(GroupGuard, "problem", counted)
    monkeypatch.setattr(guard_module, "CHECK_EVERY", 1)
    one = prune(by_one, x, ratio=0.3)
    monkeypatch.setattr(guard_module, "CHECK_EVERY", every)
    many = prune(batched, x, ratio=0.3)
    assert checks[1] > 0 and checks[every] > 0
    assert len(one.skipped) >= 2 and [(s.root, s.reason) for s in many.skipped] == \
        [(s.root, s.reason) for s in one.skipped]
    assert (many.macs_after, many.channels_after, many.kept) == (one.macs_after, one.channels_after, one.kept)
    _assert_identical(batched, by_one)
    assert many.macs_after < many.macs_before


def test_a_model_whose_groups_all_pass_is_checked_once_per_batch(monkeypatch):
    layers = [nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()]
    for _ in range(9):
        layers += [nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()]
    model = _randomise(nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)))
    checks = []
    real = GroupGuard.problem
    monkeypatch.setattr(GroupGuard, "problem", lambda self: checks.append(1) or real(self))
    result = prune(model, torch.randn(1, 3, 8, 8), ratio=0.3)
    assert result.skipped == [] and result.macs_after < 0.6 * result.macs_before
    assert len(checks) == 2  # 10 groups: one batch of CHECK_EVERY = 8, one of 2
