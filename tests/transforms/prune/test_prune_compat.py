"""tp compatibility: module shuffles/permutes prune consistently, tracing is side-effect free, history replays."""
from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
import torchvision
from torch import nn

from compress.analysis.dead import DeadChannel
from compress.transforms.prune.dead import remove_dead_channels
from compress.transforms.modules import ChannelPermute, ChannelShuffle
from compress.transforms.prune.layer_roles import locked_layers, output_layers
from compress.transforms.prune.pruner import prune
from compress.transforms.prune.tp_compat import (ChannelOrigins, build_graph, prune_group, replay_history,
                                           shuffle_permutation, swap_shufflenet_blocks)


class ShuffleNet(nn.Module):
    """stem -> conv (groups g1) -> BN -> ReLU -> channel mixer -> conv (groups g2) -> BN -> ReLU -> pool -> Linear."""

    def __init__(self, mixer: nn.Module, g1: int = 1, g2: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.c1, self.b1 = nn.Conv2d(32, 32, 3, padding=1, groups=g1), nn.BatchNorm2d(32)
        self.mix = mixer
        self.c2, self.b2 = nn.Conv2d(32, 32, 1, groups=g2), nn.BatchNorm2d(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = self.mix(torch.relu(self.b1(self.c1(x))))
        return self.head(torch.relu(self.b2(self.c2(x))).mean(dim=(2, 3)))


class _Dead:
    def __init__(self, dead):
        self.dead = dead

    def dead_channels(self):
        return self.dead


def _zero_and_remove(model: nn.Module, channels: list[int], x: torch.Tensor):
    """Make c1's channels exactly 0 after the ReLU, remove them, and return (reference, report)."""
    model.b1.weight.data[channels] = 0.0
    model.b1.bias.data[channels] = -1.0
    ref = copy.deepcopy(model)
    report = remove_dead_channels(model, x[:1], _Dead({"c1": {c: DeadChannel("zero_gamma", 0.0) for c in channels}}),
                                  probe=[x])
    return ref, report


def test_shuffle_permutation_matches_the_module():
    x = torch.randn(2, 12, 3, 3)
    for groups in (2, 3, 4):
        assert torch.equal(ChannelShuffle(groups)(x), x[:, shuffle_permutation(12, groups)])


@pytest.mark.parametrize("mode", ["permute", "groups"])
def test_shufflenet_swap_keeps_outputs(mode):
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        assert swap_shufflenet_blocks(model, shuffle=mode) == 16
        assert torch.equal(model(x), ref)
    result = prune(model, x[:1], ratio=0.3)  # both modes prune and run
    assert model(x).shape == (2, 10) and result.macs_fraction < 0.8


@pytest.mark.parametrize("g1", [1, 4])
def test_channel_shuffle_removes_a_position_from_every_group(g1):
    x = torch.randn(4, 3, 12, 12)
    model = ShuffleNet(ChannelShuffle(4), g1=g1).eval()
    ref, report = _zero_and_remove(model, [5, 13, 21, 29], x)  # position 5 of each of the 4 groups of 8
    with torch.no_grad():
        assert float((model(x) - ref(x)).abs().max() / ref(x).abs().max()) <= 1e-5
    assert report.channels_removed == 4 and model.c1.out_channels == model.c2.in_channels == 28

    single = ShuffleNet(ChannelShuffle(4), g1=g1).eval()
    _, report = _zero_and_remove(single, [5], x)  # alone it would break the shuffle: coupled to live channels
    assert report.channels_removed == 0 and "not constant" in report.skipped[0].reason


def test_channel_shuffle_ratio_pruning_keeps_whole_positions():
    model = ShuffleNet(ChannelShuffle(4)).eval()
    prune(model, torch.randn(1, 3, 12, 12), ratio=0.3)
    assert model.c1.out_channels % 4 == 0 and model.c1.out_channels < 32
    model(torch.randn(2, 3, 12, 12))


def test_shuffle_into_grouped_conv_is_locked():
    model = ShuffleNet(ChannelShuffle(4), g1=4, g2=4).eval()
    graph = build_graph(model, torch.randn(1, 3, 12, 12))
    assert locked_layers(graph) == {model.c1}
    result = prune(model, torch.randn(1, 3, 12, 12), ratio=0.3)
    assert "c1" in result.ignored and model.c1.out_channels == 32 and model.c2.out_channels < 32


@pytest.mark.parametrize("g1, g2", [(4, 1), (1, 4)])
def test_permute_next_to_a_grouped_conv_is_locked(g1, g2):
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(0))
    x = torch.randn(1, 3, 12, 12)
    assert locked_layers(build_graph(ShuffleNet(ChannelPermute(perm)), x)) == set()  # dense: index-mapped
    model = ShuffleNet(ChannelPermute(perm), g1=g1, g2=g2).eval()
    assert locked_layers(build_graph(model, x)) == {model.c1}
    result = prune(model, x, ratio=0.3)
    assert "c1" in result.ignored and model.mix.perm.numel() == model.c1.out_channels == 32
    assert model.stem.out_channels < 32 and model.c2.out_channels < 32
    assert model(torch.randn(2, 3, 12, 12)).shape == (2, 10)


def test_channel_permute_prunes_each_channel_independently():
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(0))
    model = ShuffleNet(ChannelPermute(perm)).eval()
    x = torch.randn(4, 3, 12, 12)
    ref, report = _zero_and_remove(model, [3, 17, 30], x)
    with torch.no_grad():
        assert float((model(x) - ref(x)).abs().max() / ref(x).abs().max()) <= 1e-5
    assert report.channels_removed == 3 and model.mix.perm.numel() == 29
    assert sorted(model.mix.perm.tolist()) == list(range(29))


def test_graph_building_restores_modes_and_removes_hooks():
    model = ShuffleNet(ChannelShuffle(4)).train()
    model.b1.eval()
    model.stem.requires_grad_(False)
    build_graph(model, torch.randn(1, 3, 12, 12))
    assert model.training and not model.b1.training and model.b2.training
    assert not model.mix._forward_hooks and not model.stem.weight.requires_grad and model.c1.weight.requires_grad


def test_frozen_model_still_prunes():
    model = ShuffleNet(nn.Identity()).eval().requires_grad_(False)  # a frozen backbone leaves no autograd graph
    prune(model, torch.randn(1, 3, 12, 12), ratio=0.25)
    assert model.c1.out_channels == 24 and not any(p.requires_grad for p in model.parameters())


def test_multiplier_depthwise_inputs_are_locked():
    model = ShuffleNet(nn.Identity())
    model.c1 = nn.Conv2d(32, 64, 3, padding=1, groups=32)  # channel multiplier 2: tp cannot prune its inputs
    model.b1, model.c2 = nn.BatchNorm2d(64), nn.Conv2d(64, 32, 1)
    result = prune(model.eval(), torch.randn(1, 3, 12, 12), ratio=0.25)
    assert "stem" in result.ignored and model.stem.out_channels == model.c1.in_channels == 32
    assert model(torch.randn(2, 3, 12, 12)).shape == (2, 10)


def test_output_layers_find_linear_and_conv_classifiers():
    graph = build_graph(torchvision.models.squeezenet1_0(num_classes=10), torch.randn(1, 3, 32, 32))
    assert {graph._module2name[m] for m in output_layers(graph)} == {"classifier.1"}
    model = ShuffleNet(nn.Identity())
    assert output_layers(build_graph(model, torch.randn(1, 3, 8, 8))) == {model.head}


def test_split_offsets_stay_current_between_groups():
    class Split(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(16, 4, 1)

        def forward(self, x):
            left, right = torch.split(torch.cat([self.a(x), self.b(x)], 1), [8, 8], dim=1)
            return self.c(torch.cat([left, right], 1))

    model = Split()
    graph = build_graph(model, torch.randn(1, 3, 4, 4))
    prune_group(graph, graph.get_pruning_group(model.a, tp.prune_conv_out_channels, [0, 1]))
    split = next(n for n in graph.module2node.values() if n.type == tp.ops.OPTYPE.SPLIT)
    assert split.module.offsets == [0, 6, 14]
    group = graph.get_pruning_group(model.b, tp.prune_conv_out_channels, [7])  # maps through the split's offsets
    c_item = next(item for item in group if item.dep.target.module is model.c)
    assert c_item.idxs == [13]


def test_replayed_history_reproduces_the_pruning():
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    twin = copy.deepcopy(model)
    x = torch.randn(1, 3, 32, 32)
    graph = build_graph(model, x)
    origins = ChannelOrigins(model)
    names = {m: n for n, m in model.named_modules()}
    for layer, idxs in (("features.2.conv.0.0", [1, 4]), ("features.1.conv.1", [0])):
        group = graph.get_pruning_group(model.get_submodule(layer), tp.prune_conv_out_channels, idxs)
        origins.record(group, names)
        prune_group(graph, group)
    replay_history(build_graph(twin, x), graph.pruning_history())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))
    assert origins.original("features.2.conv.0.0").tolist() == [0, 2, 3] + list(range(5, 96))


def test_split_outputs_map_to_the_consumer_of_each_part():
    class SplitTwo(nn.Module):
        """c1 -> BN -> ReLU -> split -> a(first part), b(second part) -> cat; tp traces b before a."""

        def __init__(self) -> None:
            super().__init__()
            self.c1, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
            self.a, self.b = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            x = torch.relu(self.bn(self.c1(x)))
            x1, x2 = torch.split(x, [self.a.in_channels, x.shape[1] - self.a.in_channels], dim=1)
            return torch.cat((self.a(x1), self.b(x2)), dim=1)

    x = torch.randn(2, 3, 8, 8)
    for dead in ([0], [9], [0, 9, 10]):
        model = SplitTwo().eval()
        model.bn.weight.data[dead], model.bn.bias.data[dead] = 0.0, -1.0  # exactly 0 after the ReLU
        with torch.no_grad():
            ref = model(x)
        graph = build_graph(model, x[:1])
        prune_group(graph, graph.get_pruning_group(model.c1, tp.prune_conv_out_channels, dead))
        assert model.a.in_channels == 8 - sum(c < 8 for c in dead)
        with torch.no_grad():
            assert torch.equal(model(x), ref)  # removing zero channels (and the weights reading them) is exact


class _EcaNet(nn.Module):
    """conv -> BN -> ReLU -> timm EcaModule -> conv -> BN -> ReLU -> pool -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        from timm.layers import EcaModule

        self.conv1, self.bn1 = nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.eca = EcaModule(32)
        self.conv2, self.bn2 = nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.eca(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.relu(self.bn2(self.conv2(x))).mean(dim=(2, 3)))


def test_eca_gate_is_traced_as_a_channel_pass_through_and_prunes():
    """tp used to trace ECA's 1-D conv over the channel vector (slow on ECA-ResNets); now it sees channels pass
    through: the gate's conv is no graph node, conv1's group reaches conv2, and the pruned model runs with the
    ECA module untouched (its parameters do not depend on the width)."""
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = _EcaNet().eval()
    x = torch.randn(2, 3, 16, 16)
    graph = build_graph(model, x[:1])
    assert model.eca.conv not in graph.module2node
    group = graph.get_pruning_group(model.conv1, tp.prune_conv_out_channels, [0, 1])
    assert model.conv2 in {item.dep.target.module for item in group}
    eca_before = copy.deepcopy(model.eca.state_dict())
    prune(model, x[:1], ratio=0.25, verbose=False)
    assert model.conv1.out_channels == model.conv2.in_channels == 24
    assert all(torch.equal(v, eca_before[k]) for k, v in model.eca.state_dict().items())
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_a_concat_along_a_negative_non_channel_dim_gets_no_channel_index_maps():
    """torch stores cat(dim=-1)'s dim as 2**64 - 1; tp took it for "uninitialised" and mapped the concat as a
    channel concat (torchvision Swin-S/B: a TypeError inside tp's graph building). The fix skips it, as tp skips a
    concat along a positive dim other than 1, and still maps dim 1 and -3 (NCHW channels)."""
    from types import SimpleNamespace

    from torch_pruning.dependency import index_mapping

    from compress.transforms.prune import tp_compat

    assert getattr(index_mapping.update_concat_index_mapping, "compress_fixed", False)  # installed on import
    calls = []
    fixed = tp_compat._concat_dim_fixed(lambda graph, node: calls.append(node.grad_fn._saved_dim))
    for dim in (2 ** 64 - 1, 2 ** 64 - 2, 2 ** 64 - 3, 1):
        fixed(None, SimpleNamespace(grad_fn=SimpleNamespace(_saved_dim=dim)))
    assert calls == [2 ** 64 - 3, 1]
    assert tp_compat._concat_dim_fixed(fixed) is fixed  # installing twice does not wrap twice



def test_a_concat_tp_cannot_size_makes_every_group_through_it_fail_to_build():
    """tp's channel inference gives up on deep concat chains (timm's DPN) and its concat map then raises a
    TypeError that stops the whole graph; the fix maps that concat so only the groups through it fail (the
    guard skips them with the reason) and leaves other errors alone."""
    from types import SimpleNamespace

    from compress.errors import CompressError
    from compress.transforms.prune import tp_compat

    def unsizable(graph, node):
        node.module.concat_sizes = [4, None]
        return sum(node.module.concat_sizes)  # tp's own failure: int + None

    a, b = SimpleNamespace(dependencies=[]), SimpleNamespace(dependencies=[])
    cat = SimpleNamespace(name="_ConcatOp_7", grad_fn=SimpleNamespace(_saved_dim=1), inputs=[a, b],
                          module=SimpleNamespace(concat_sizes=None), dependencies=[])
    into = [SimpleNamespace(target=cat, index_mapping=[None, None]) for _ in (a, b)]
    a.dependencies, b.dependencies = [into[0]], [into[1]]
    back = [SimpleNamespace(target=n, index_mapping=[None, None]) for n in (a, b)]
    cat.dependencies = back
    tp_compat._concat_dim_fixed(unsizable)(None, cat)
    for dep in into + back:
        with pytest.raises(CompressError, match="could not infer the input sizes of concat _ConcatOp_7"):
            dep.index_mapping[1]([0])

    def other_bug(graph, node):
        raise TypeError("something else")

    with pytest.raises(TypeError, match="something else"):
        tp_compat._concat_dim_fixed(other_bug)(None, SimpleNamespace(
            grad_fn=SimpleNamespace(_saved_dim=1), module=SimpleNamespace(concat_sizes=[4, 4])))


def test_a_vit_prunes_its_residual_stream_by_the_same_positions_of_every_head():
    """torchvision's ViT: the residual stream runs through every MultiheadAttention, so its pruned dimensions must
    be the same positions of every head (``embed_dim`` stays a multiple of the heads), and the model's own
    ``hidden_dim``, which its patch embedding reshapes with, follows the new width."""
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                                 hidden_dim=32, mlp_dim=64, num_classes=10).eval()
    result = prune(model, torch.randn(1, 3, 32, 32), ratio=0.3)
    assert result.skipped == []
    kept = result.kept["conv_proj"]
    width, head_dim = len(kept), 32 // 4
    assert width < 32 and model.hidden_dim == model.conv_proj.out_channels == width
    positions = [sorted(k % head_dim for k in kept if k // head_dim == h) for h in range(4)]
    assert all(p == positions[0] for p in positions), positions
    for layer in model.encoder.layers:
        attention = layer.self_attention
        assert attention.embed_dim == width and attention.head_dim * attention.num_heads == width
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_a_rolled_back_vit_group_leaves_hidden_dim_at_the_restored_width(monkeypatch):
    """The residual-stream group prunes (``hidden_dim`` follows), then fails: its rollback restores the layers
    and ``hidden_dim`` with them."""
    from compress.transforms.prune import guard as guard_module
    from compress.transforms.prune.guard import GroupGuard

    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                                 hidden_dim=32, mlp_dim=64, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    real = guard_module.prune_group

    def failing(graph, group):
        real(graph, group)
        assert model.hidden_dim == model.conv_proj.out_channels == 28  # pruned, and followed
        raise RuntimeError("planted failure after the residual group pruned")

    monkeypatch.setattr(guard_module, "prune_group", failing)
    graph = build_graph(model, x)
    group = graph.get_pruning_group(model.conv_proj, tp.prune_conv_out_channels, [0, 8, 16, 24])
    assert not GroupGuard(model, x).prune(graph, group)
    assert model.conv_proj.out_channels == model.hidden_dim == 32
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
