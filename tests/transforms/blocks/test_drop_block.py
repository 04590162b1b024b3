"""Block dropping: which blocks qualify, exactness when the branch is zero, the streamed error, clear errors."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models import efficientnet, mobilenet_v2, mobilenet_v3_small, mobilenetv2, mobilenetv3, resnet18
from torchvision.models.resnet import BasicBlock

from compress.errors import CompressError
from compress.models import small_mobilenet_v2, small_resnet
from compress.transforms import block_drop_errors, drop_block, drop_blocks, droppable_blocks
from compress.transforms.prune.tp_compat import build_graph

TOL = 1e-6


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return small_resnet(widths=(16, 32, 64), blocks=(2, 1, 1)).eval()


def _res_connect_names(model: nn.Module, types: tuple[type, ...]) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, types) and m.use_res_connect]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_droppable_small_resnet_are_the_identity_shortcut_blocks():
    model = _resnet()
    expected = [n for n, m in model.named_modules() if isinstance(m, BasicBlock) and m.downsample is None]
    assert list(droppable_blocks(model)) == expected == ["layers.0.0", "layers.0.1"]


def test_droppable_resnet18():
    assert list(droppable_blocks(resnet18(weights=None))) == ["layer1.0", "layer1.1", "layer2.1", "layer3.1",
                                                              "layer4.1"]


@pytest.mark.parametrize("build, types", [
    (lambda: mobilenet_v2(weights=None), (mobilenetv2.InvertedResidual,)),
    (lambda: mobilenet_v3_small(weights=None), (mobilenetv3.InvertedResidual,)),
    (lambda: efficientnet.efficientnet_b0(weights=None), (efficientnet.MBConv,)),
])
def test_droppable_res_connect_blocks(build, types):
    model = build()
    expected = _res_connect_names(model, types)
    everything = [n for n, m in model.named_modules() if isinstance(m, types)]
    assert expected and len(expected) < len(everything)  # both kinds present: the predicate really decides
    assert list(droppable_blocks(model)) == expected


def test_droppable_fused_mbconv():
    cnf = efficientnet.FusedMBConvConfig(4, 3, 1, 8, 8, 1)
    block, strided = (efficientnet.FusedMBConv(c, 0.0, nn.BatchNorm2d)
                      for c in (cnf, efficientnet.FusedMBConvConfig(4, 3, 2, 8, 8, 1)))
    model = nn.Sequential(block, strided)
    assert list(droppable_blocks(model)) == ["0"]


def test_drop_basic_block_with_zero_branch_is_exact():
    model = _resnet()
    block = model.layers[0][1]
    nn.init.zeros_(block.bn2.weight)
    nn.init.zeros_(block.bn2.bias)
    reference = copy.deepcopy(model)
    x = torch.randn(3, 1, 16, 16)
    errors = block_drop_errors(model, [x])
    assert errors["layers.0.1"] < 1e-10 and errors["layers.0.0"] > 1e-3

    assert drop_blocks(model, ["layers.0.1"]) == ["layers.0.1"]
    assert isinstance(model.layers[0][1], nn.Identity)
    with torch.no_grad():
        assert _max_diff(model(x), reference(x)) < TOL


def test_drop_inverted_residual_with_zero_branch_is_exact():
    torch.manual_seed(0)
    model = small_mobilenet_v2(num_classes=10).eval()
    names = list(droppable_blocks(model))
    name, other = names[0], names[-1]
    last_bn = model.get_submodule(name).conv[-1]
    assert isinstance(last_bn, nn.BatchNorm2d)
    nn.init.zeros_(last_bn.weight)
    nn.init.zeros_(last_bn.bias)
    reference = copy.deepcopy(model)
    x = torch.randn(2, 1, 16, 16)
    errors = block_drop_errors(model, [(x, torch.zeros(2, dtype=torch.long))])
    assert errors[name] < 1e-10 and errors[other] > 1e-3

    drop_blocks(model, [name])
    assert isinstance(model.get_submodule(name), nn.Identity)
    with torch.no_grad():
        assert _max_diff(model(x), reference(x)) < TOL


def test_block_drop_errors_match_direct_computation_and_clean_up():
    torch.manual_seed(0)
    block = BasicBlock(8, 8)
    model = nn.Sequential(block).train()
    batches = [(torch.randn(2, 8, 8, 8), torch.zeros(2)) for _ in range(3)]
    errors = block_drop_errors(model, batches, max_batches=2)

    assert model.training and block.training and block.bn1.training  # flags restored
    assert not block._forward_hooks
    block.eval()
    with torch.no_grad():
        xs = torch.cat([x for x, _ in batches[:2]]).double()
        out = block(xs.float()).double()
    direct = ((out - xs) ** 2).sum() / (out ** 2).sum()
    assert errors == pytest.approx({"0": direct.item()}, rel=TOL)


def test_block_drop_errors_clean_up_on_failure():
    model = _resnet().train()
    with pytest.raises(RuntimeError):
        block_drop_errors(model, [torch.randn(1, 3, 16, 16)])  # 3 channels into a 1-channel stem
    assert model.training and all(not b._forward_hooks for b in droppable_blocks(model).values())


def test_block_drop_errors_bad_input():
    model = _resnet()
    with pytest.raises(CompressError, match="max_batches"):
        block_drop_errors(model, [torch.randn(1, 1, 8, 8)], max_batches=0)
    with pytest.raises(CompressError, match="nothing"):
        block_drop_errors(model, [])
    with pytest.raises(CompressError, match="layers.1.0"):
        block_drop_errors(model, [torch.randn(1, 1, 8, 8)], names=["layers.1.0"])


@pytest.mark.parametrize("names, mentioned", [
    (["layers.0.0", "nope"], "nope"),
    (["layers.0.1", "layers.1.0"], "layers.1.0"),  # has a downsample shortcut
    ([""], "''"),  # the model itself
])
def test_drop_blocks_rejects_and_leaves_model_unchanged(names, mentioned):
    model = _resnet()
    before = copy.deepcopy(model)
    with pytest.raises(CompressError, match=mentioned) as info:
        drop_blocks(model, names)
    assert "layers.0.0, layers.0.1" in str(info.value)  # lists the droppable ones
    assert [type(m) for m in model.modules()] == [type(m) for m in before.modules()]
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), before(x))


def test_drop_block_refuses_non_droppable_modules():
    with pytest.raises(CompressError, match="Conv2d"):
        drop_block(nn.Conv2d(4, 4, 3))
    downsample = nn.Sequential(nn.Conv2d(4, 8, 1, bias=False), nn.BatchNorm2d(8))
    with pytest.raises(CompressError, match="BasicBlock with a downsample"):
        drop_block(BasicBlock(4, 8, downsample=downsample))
    assert isinstance(drop_block(BasicBlock(4, 4)), nn.Identity)


def test_dropped_model_still_traces_with_torch_pruning():
    model = _resnet()
    drop_blocks(model, ["layers.0.0", "layers.0.1"])
    x = torch.randn(1, 1, 16, 16)
    graph = build_graph(model, x)
    assert model.conv1 in graph.module2node and model.layers[1][0].conv1 in graph.module2node
    assert model(x).shape == (1, 10)
