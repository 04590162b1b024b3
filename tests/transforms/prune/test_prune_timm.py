"""timm convnets torch-pruning 1.6.1 fails on (random weights, 64 px): prune skips, names or times out, never crashes.

Without the guard these raise inside torch-pruning (cspresnet50: IndexError in the importance of the
cross-stage groups; mixnet_s: its MixedConv2d keeps its own split sizes, so the pruned model fails (compress
keeps them up to date); dpn68:
TypeError while building the graph) or hang (rexnet_100: building its groups did not end in 300 s).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.errors import CompressError
from compress.transforms.prune.pruner import prune

timm = pytest.importorskip("timm")

PX = 64


def _model(name: str) -> nn.Module:
    return timm.create_model(name, pretrained=False, num_classes=10).eval()


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def _runs(model: nn.Module) -> None:
    with torch.no_grad():
        out = model(torch.randn(2, 3, PX, PX))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name, reason", [("cspresnet50", "importance estimation raised IndexError")])
def test_groups_torch_pruning_fails_on_are_skipped_and_the_rest_prunes(name, reason):
    model = _model(name)
    result = prune(model, torch.randn(1, 3, PX, PX), ratio=0.3)
    assert result.skipped and any(reason in s.reason for s in result.skipped)
    for s in result.skipped:
        if s.root in result.channels_before:
            assert result.channels_after[s.root] == result.channels_before[s.root], s.root
    assert result.macs_after < 0.95 * result.macs_before
    _runs(model)


def test_a_concat_torch_pruning_cannot_size_skips_only_the_groups_through_it():
    """dpn68: tp's channel inference gives up on the dense path's concat chain, and tp's concat map then raised a
    TypeError that stopped the whole graph (a CompressError before the fix); now only those groups are skipped."""
    model = _model("dpn68")
    result = prune(model, torch.randn(1, 3, PX, PX), ratio=0.3)
    reasons = [s.reason for s in result.skipped]
    assert any("could not infer the input sizes of concat" in r for r in reasons)
    assert result.macs_after < 0.8 * result.macs_before
    assert _hooks(model) == 0  # tp's tracing hooks are gone
    _runs(model)


@pytest.mark.parametrize("same", [False, True])
def test_nf_nets_weight_standardised_convs_prune_with_their_gain(same):
    """timm's ScaledStdConv2d carries a per-output-channel gain that tp's conv pruner leaves at the old width;
    prune_group prunes it too, so every group prunes and each kept filter computes what it did before (also the
    dynamically padded ScaledStdConv2dSame of dm_nfnet)."""
    from timm.layers import ScaledStdConv2d, ScaledStdConv2dSame

    def conv(cin: int, cout: int, stride: int = 1) -> nn.Module:
        return ScaledStdConv2dSame(cin, cout, 3, stride=stride, padding="same") if same else \
            ScaledStdConv2d(cin, cout, 3, stride=stride, padding=1)

    torch.manual_seed(0)
    model = nn.Sequential(conv(3, 16), nn.ReLU(), conv(16, 16, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(16, 10)).eval()
    assert getattr(model[2], "same_pad", False) == same  # stride 2 'same': padded in forward
    with torch.no_grad():
        model[0].gain.uniform_(0.5, 2.0)
    first = conv(3, 16).eval()
    first.load_state_dict(model[0].state_dict())
    x = torch.randn(2, 3, 12, 12)
    result = prune(model, x[:1], ratio=0.25)
    assert result.skipped == []
    assert model[0].gain.shape[0] == model[0].out_channels == 12 and model[2].in_channels == 12
    kept = result.kept["0"]
    with torch.no_grad():
        torch.testing.assert_close(model[0](x), first(x)[:, kept], rtol=1e-5, atol=1e-6)
    _runs_on(model, x)


def _runs_on(model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


def test_a_hang_in_torch_pruning_ends_at_the_budget_naming_the_layer():
    model = _model("rexnet_100")
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    with pytest.raises(CompressError, match=r"prune: time budget of 4.0 s spent, still running at module "
                                            r"'features\.[^']+' .*ignored_layers"):
        prune(model, torch.randn(1, 3, PX, PX), ratio=0.3, time_budget_s=4.0)
    assert _hooks(model) == 0
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == widths
    _runs(model)


class _GlobalContextNet(nn.Module):
    """stem -> timm's GlobalContext block -> conv -> Linear: tp's index maps around the attention pooling form a
    cycle, so building the stem's group never ends on its own."""

    def __init__(self) -> None:
        super().__init__()
        from timm.layers import GlobalContext

        self.stem, self.gc = nn.Conv2d(3, 16, 3, padding=1), GlobalContext(16, rd_ratio=0.25)
        self.conv, self.head = nn.Conv2d(16, 24, 3, padding=1), nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(self.gc(self.stem(x))).mean((2, 3)))


def test_a_runaway_group_is_stopped_by_its_index_lists_length_with_the_time_budgets_verdict(monkeypatch):
    from compress.transforms.prune import tp_compat

    x = torch.randn(1, 3, 16, 16)
    monkeypatch.setattr(tp_compat, "GROUP_BUDGET_S", 600.0)  # only the length bound can stop it within 60 s
    torch.manual_seed(0)
    by_length = prune(_GlobalContextNet().eval(), x, ratio=0.3, time_budget_s=60)
    assert {s.root for s in by_length.skipped} == {"stem", "gc.mlp_scale.fc2", "gc.conv_attn"}
    assert all("an index list grew to" in s.reason and "past the largest dimension of the model (24;" in s.reason
               for s in by_length.skipped)

    monkeypatch.setattr(tp_compat, "GROUP_BUDGET_S", 0.5)
    monkeypatch.setattr(tp_compat, "index_limit", lambda graph: None)  # the time budget alone
    torch.manual_seed(0)
    by_time = prune(_GlobalContextNet().eval(), x, ratio=0.3, time_budget_s=60)
    assert {s.root for s in by_time.skipped} == {s.root for s in by_length.skipped}
    assert all("in 0.5 s" in s.reason for s in by_time.skipped)
    assert (by_time.macs_after, by_time.channels_after) == (by_length.macs_after, by_length.channels_after)
    assert by_length.macs_after < by_length.macs_before


def test_a_flatten_map_that_would_outgrow_the_model_is_refused_before_its_list_is_built():
    """One turn of the global-context cycle asks tp's flatten map for C * C entries (1.5 M, ~1 s of pure Python
    on gc_efficientnetv2_rw_t): the bound refuses it from the lengths alone; maps within it, and reverse maps,
    are tp's own, and leaving the bound restores tp's map."""
    from torch_pruning import _helpers
    from torch_pruning.dependency import index_mapping

    from compress.transforms.prune import tp_compat

    idxs = [_helpers._HybridIndex(idx=i, root_idx=i) for i in range(3)]
    expand, shrink = index_mapping._FlattenIndexMapping(stride=4), index_mapping._FlattenIndexMapping(4, True)
    plain = index_mapping._FlattenIndexMapping.__call__
    with tp_compat._index_lists_within(12):
        assert [i.idx for i in expand(idxs)] == list(range(12))  # 3 * 4 = 12 <= 12: built as tp builds it
        assert sorted(i.idx for i in shrink(expand(idxs))) == [0, 1, 2]
        with pytest.raises(tp_compat.RunawayGroup, match="grew to 16 entries, past the largest dimension of "
                                                         r"the model \(12;"):
            expand(idxs + [_helpers._HybridIndex(idx=3, root_idx=3)])
    assert index_mapping._FlattenIndexMapping.__call__ is plain
    assert len(expand([_helpers._HybridIndex(idx=i, root_idx=i) for i in range(4)])) == 16  # unbounded again


def test_mixnet_mixed_convs_prune_through_their_splits_channel_for_channel():
    """timm's MixedConv2d splits its input by its own ``splits``: after pruning they follow the sub-convs, and
    every sub-conv holds exactly the kept channels of its part of the split (checked against the original weights
    through the kept indices), so nothing is skipped."""
    import copy

    model = _model("mixnet_s")
    reference = copy.deepcopy(model)
    result = prune(model, torch.randn(1, 3, PX, PX), ratio=0.3)
    assert result.skipped == [] and result.macs_after < 0.6 * result.macs_before
    block, ref_block = model.blocks[5][1], reference.blocks[5][1]
    mid = result.kept["blocks.5.1.conv_pw"]  # original indices of the expanded channels kept
    offsets = [0, 300, 600, 900]  # conv_dw: four depthwise parts of 300, conv_pwl: two inputs of 600
    dw = [offset + torch.as_tensor(result.kept[f"blocks.5.1.conv_dw.{i}"]) for i, offset in enumerate(offsets)]
    assert torch.equal(torch.cat(dw), torch.as_tensor(mid))
    assert block.conv_dw.splits == [len(part) for part in dw] and sum(block.conv_dw.splits) == len(mid)
    for i, part in enumerate(dw):
        assert torch.equal(block.conv_dw[str(i)].weight, ref_block.conv_dw[str(i)].weight[part - offsets[i]])
    for j, offset in enumerate((0, 600)):
        cols = torch.as_tensor([k - offset for k in mid if offset <= k < offset + 600])
        conv = f"blocks.5.1.conv_pwl.{j}"
        rows = torch.as_tensor(result.kept.get(conv, range(block.conv_pwl[str(j)].out_channels)))
        want = ref_block.conv_pwl[str(j)].weight[rows][:, cols]
        assert torch.equal(block.conv_pwl[str(j)].weight, want), j
    assert block.conv_pwl.splits == [block.conv_pwl[str(j)].in_channels for j in range(2)]
    _runs(model)


def test_a_rolled_back_group_through_a_mixed_conv_restores_its_splits(monkeypatch):
    """A group through a MixedConv2d prunes (its ``splits`` follow), then fails: the rollback restores the
    sub-convs, and the guard re-syncs ``splits`` (the MixedConv2d itself is no node of the group's snapshot)."""
    import torch_pruning as tp

    from compress.transforms.prune import guard as guard_module
    from compress.transforms.prune.guard import GroupGuard
    from compress.transforms.prune.tp_compat import build_graph

    model = _model("mixnet_s")
    x = torch.randn(1, 3, PX, PX)
    mixed = model.blocks[5][1].conv_dw
    real = guard_module.prune_group

    def failing(graph, group):
        real(graph, group)
        assert mixed.splits == [299, 300, 300, 300]  # pruned, and followed
        raise RuntimeError("planted failure after the group pruned")

    monkeypatch.setattr(guard_module, "prune_group", failing)
    graph = build_graph(model, x)
    group = graph.get_pruning_group(model.blocks[5][1].conv_pw, tp.prune_conv_out_channels, [0])
    assert not GroupGuard(model, x).prune(graph, group)
    assert mixed.splits == [300, 300, 300, 300] and mixed["0"].in_channels == 300
    _runs(model)
