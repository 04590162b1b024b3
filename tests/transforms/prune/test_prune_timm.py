"""timm convnets torch-pruning 1.6.1 fails on (random weights, 64 px): prune skips, names or times out, never crashes.

Without the guard these raise inside torch-pruning (cspresnet50: IndexError in the importance of the
cross-stage groups; mixnet_s: its MixedConv2d keeps its own split sizes, so the pruned model fails; dpn68:
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


@pytest.mark.parametrize("name, reason", [("cspresnet50", "importance estimation raised IndexError"),
                                          ("mixnet_s", "the pruned model fails: RuntimeError: split_with_sizes")])
def test_groups_torch_pruning_fails_on_are_skipped_and_the_rest_prunes(name, reason):
    model = _model(name)
    result = prune(model, torch.randn(1, 3, PX, PX), ratio=0.3)
    assert result.skipped and any(reason in s.reason for s in result.skipped)
    for s in result.skipped:
        if s.root in result.channels_before:
            assert result.channels_after[s.root] == result.channels_before[s.root], s.root
    assert result.macs_after < 0.95 * result.macs_before
    _runs(model)


def test_a_graph_torch_pruning_cannot_build_is_a_compress_error_naming_the_layer():
    model = _model("dpn68")
    with pytest.raises(CompressError, match=r"building torch-pruning's dependency graph failed at module "
                                            r"'features\.[^']+' in update_concat_index_mapping .*TypeError: "
                                            r"unsupported operand") as info:
        prune(model, torch.randn(1, 3, PX, PX), ratio=0.3)
    assert isinstance(info.value.__cause__, TypeError)
    assert _hooks(model) == 0  # tp's tracing hooks are gone
    _runs(model)


def test_a_hang_in_torch_pruning_ends_at_the_budget_naming_the_layer():
    model = _model("rexnet_100")
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    with pytest.raises(CompressError, match=r"prune: time budget of 4.0 s spent, still running at module "
                                            r"'features\.[^']+' .*ignored_layers"):
        prune(model, torch.randn(1, 3, PX, PX), ratio=0.3, time_budget_s=4.0)
    assert _hooks(model) == 0
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == widths
    _runs(model)
