"""The model-level applier: selection, skip reasons, records, permute folding, modes and dtypes."""
from __future__ import annotations

import copy
import json
from dataclasses import asdict

import pytest
import torch
from torch import nn

from compress.errors import CompressError
from compress.transforms import ChannelPermute, RewriteRecord, rewrite
from compress.transforms.rewrite.selection import LayerSelection
from compress.transforms.rewrite.decompose import relative_error


class Block(nn.Module):
    """A ResNet basic block (residual add couples the channels of conv2, the input and the next reader)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class MyConv(nn.Conv2d):
    """An unknown custom conv type: must be reported, never rewritten."""


def tiny_net() -> nn.Sequential:
    net = nn.Sequential()
    net.add_module("stem", nn.Conv2d(3, 16, 3, padding=1))
    net.add_module("bn0", nn.BatchNorm2d(16))
    net.add_module("act0", nn.ReLU())
    net.add_module("block", Block(16))
    net.add_module("big", nn.Conv2d(16, 32, 5, stride=2, padding=2))
    net.add_module("bn1", nn.BatchNorm2d(32))
    net.add_module("act1", nn.ReLU())
    net.add_module("pw", nn.Conv2d(32, 32, 1))
    net.add_module("custom", MyConv(32, 32, 3, padding=1))
    net.add_module("pool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flat", nn.Flatten())
    net.add_module("fc", nn.Linear(32, 10))
    for m in net.modules():  # non-trivial BatchNorm statistics so permuting them matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    return net.eval()


X = torch.randn(2, 3, 16, 16)


def _by_layer(records: list[RewriteRecord]) -> dict[str, RewriteRecord]:
    return {r.layer: r for r in records}


def test_default_selection_rewrites_eligible_and_reports_custom_types():
    net = tiny_net()
    custom = net.custom
    records = _by_layer(rewrite(net, "separable", example_inputs=X[:1], T=2))
    assert set(records) == {"block.conv1", "block.conv2", "big", "custom"}  # stem: 3 < 16 channels; pw: 1x1
    assert records["custom"].skipped and "MyConv" in records["custom"].skipped
    assert net.custom is custom
    assert all(records[n].skipped is None for n in ("block.conv1", "block.conv2", "big"))
    assert isinstance(net.big, nn.Sequential) and net.big.depthwise.groups == 16
    assert net(X).shape == (2, 10)


def test_explicit_names_report_why_they_are_skipped():
    net = tiny_net()
    records = _by_layer(rewrite(net, "dilated", layers=["stem", "big", "bn0"], include=["block.*"],
                                exclude=["block.conv2"], min_channels=1))
    assert records["big"].skipped is None and net.big.dilation == (2, 2)
    assert "at least 5x5" in records["stem"].skipped and "at least 5x5" in records["block.conv1"].skipped
    assert "BatchNorm2d" in records["bn0"].skipped
    assert "block.conv2" not in records and "block.bn1" not in records  # excluded; patterns skip non-convs


def test_channel_and_kernel_filters():
    net = tiny_net()
    records = _by_layer(rewrite(net, "bottleneck", include=["big", "pw", "block.*"], kernel_sizes=(1, 3),
                                min_channels=32, rank=4))
    assert "min_channels=32" in records["block.conv1"].skipped
    assert "not in kernel_sizes" in records["big"].skipped or "min_channels" in records["big"].skipped
    assert records["pw"].skipped is None and net.pw.reduce.out_channels == 4
    records = _by_layer(rewrite(net, "bottleneck", layers=["big"], kernel_sizes=(3,), min_channels=1, rank=4))
    assert "kernel 5x5 not in kernel_sizes=(3,)" in records["big"].skipped
    assert type(net.big) is nn.Conv2d


def test_bad_arguments_raise_compress_error():
    net = tiny_net()
    with pytest.raises(CompressError, match="unknown rewrite kind"):
        rewrite(net, "sparse")
    with pytest.raises(CompressError, match="unknown option 'T'; expected the kind's groups, energy_threshold or "
                                            "the selection's layers, include, exclude, min_channels, kernel_sizes"):
        rewrite(net, "grouped", T=2)
    with pytest.raises(CompressError, match="rewrite: min_channels: expected an integer >= 1"):
        rewrite(net, "grouped", min_channels=0)
    with pytest.raises(CompressError, match="not both"):
        rewrite(net, "grouped", select=LayerSelection(layers=("pw",)), include=["block.*"])
    with pytest.raises(CompressError, match="not found"):
        rewrite(net, "grouped", layers=["nope"])
    with pytest.raises(CompressError, match="matches no module"):
        rewrite(net, "grouped", include=["layer9.*"])


def test_selection_object_and_keyword_shorthand_are_the_same():
    by_keywords, by_object = tiny_net(), tiny_net()
    by_object.load_state_dict(by_keywords.state_dict())
    a = rewrite(by_keywords, "grouped", include=["block.*"], exclude=["block.conv2"], min_channels=4, groups=2)
    b = rewrite(by_object, "grouped", select=LayerSelection(include=["block.*"], exclude=["block.conv2"],
                                                              min_channels=4), groups=2)
    assert a == b and [r.layer for r in a if r.skipped is None] == ["block.conv1"]


def test_options_object_names_the_kind_and_is_not_parsed_again():
    from compress.transforms.rewrite.kinds.separable import SeparableOptions

    by_name, by_object = tiny_net(), tiny_net()
    by_object.load_state_dict(by_name.state_dict())
    a = rewrite(by_name, "separable", layers=["big"], T=2)
    b = rewrite(by_object, SeparableOptions(T=2), select=LayerSelection(layers=["big"]))
    assert a == b and a[0].kind == "separable" and a[0].params["T"] == 2
    with pytest.raises(CompressError, match="T given beside a SeparableOptions"):
        rewrite(tiny_net(), SeparableOptions(T=2), T=3)


def test_record_costs_follow_the_formulas():
    net = tiny_net()
    records = _by_layer(rewrite(net, "separable", layers=["big"], example_inputs=X[:1], T=3))
    r = records["big"]
    # big: 16 -> 32, 5x5, stride 2 on 16x16 -> 8x8 output
    assert r.macs_before == 8 * 8 * 25 * 16 * 32
    assert r.macs_after == 16 * 8 * 8 * (25 * 3 + 3 * 32)  # C·H·W·(K²·T + T·N)
    assert r.params_before == 32 * 16 * 25 + 32
    assert r.params_after == 16 * 3 * 25 + 32 * 16 * 3 + 32
    assert r.params == {"T": 3}
    json.dumps([asdict(rec) for rec in records.values()])  # records are JSON-friendly


def test_record_errors_match_a_manual_computation():
    net = tiny_net()
    reference = copy.deepcopy(net)
    captured = {}
    reference.big.register_forward_hook(lambda m, a, o: captured.update(x=a[0]))  # returns None: output kept
    reference(X[:1])
    (r,) = rewrite(net, "bottleneck", layers=["big"], example_inputs=X[:1], rank=4)
    with torch.no_grad():
        assert r.output_error == pytest.approx(relative_error(net.big(captured["x"]),
                                                             reference.big(captured["x"])), rel=1e-5)
        assert 0 < r.weight_error < 1
    assert r.macs_after == 16 * 16 * 16 * 4 + 8 * 8 * 25 * 4 * 32  # 1x1 at input size + 5x5 at output size


def test_grouped_permutes_fold_into_neighbours_exactly():
    torch.manual_seed(1)
    net = tiny_net().double()
    unfolded = copy.deepcopy(net)
    x = X.double()
    folded_records = _by_layer(rewrite(net, "grouped", include=["block.conv1", "big"], example_inputs=x[:1],
                                       groups=4))
    rewrite(unfolded, "grouped", include=["block.conv1", "big"], example_inputs=x[:1], groups=4, absorb=False)
    assert relative_error(net(x), unfolded(x)) < 1e-12
    assert any(isinstance(m, ChannelPermute) for m in unfolded.modules())
    # block.conv1 sits between plain convs and BatchNorms: both its permutes fold away
    assert folded_records["block.conv1"].details["permutes"] == {"permute_in": "absorbed",
                                                                 "permute_out": "absorbed"}
    assert type(net.block.conv1) is nn.Conv2d and net.block.conv1.groups == 4
    # big's output permute folds into bn1 and pw; its input side is the residual stream, which the
    # grouped block.conv1 also reads: that permute stays, with the reason
    assert folded_records["big"].details["permutes"]["permute_out"] == "absorbed"
    assert "grouped conv" in folded_records["big"].details["permutes"]["permute_in"]
    assert isinstance(net.big.permute_in, ChannelPermute)


def test_training_mode_and_statistics_are_preserved():
    net = tiny_net().train()
    stats = net.bn1.running_mean.clone()
    rewrite(net, "grouped", include=["big"], example_inputs=X[:1], groups=2)
    assert all(m.training for m in net.modules())
    # the folded permute reorders bn1's statistics but changes no value
    assert torch.equal(net.bn1.running_mean.sort().values, stats.sort().values)


@pytest.mark.parametrize("kind, params", [("grouped", {"groups": 2}), ("separable", {"T": 2}),
                                          ("shuffle", {"groups": 2}), ("dilated", {}),
                                          ("bottleneck", {"rank_ratio": 0.5})])
def test_every_kind_keeps_dtype_and_output_shape(kind, params):
    net = tiny_net().double()
    x = X.double()
    records = rewrite(net, kind, example_inputs=x[:1], min_channels=4, **params)
    assert any(r.skipped is None for r in records)
    assert all(p.dtype == torch.float64 for p in net.parameters())
    assert net(x).shape == (2, 10)


def test_shared_conv_is_skipped():
    conv = nn.Conv2d(16, 16, 3, padding=1)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), conv, nn.ReLU(), conv)
    records = rewrite(net, "bottleneck", include=["1", "3"], rank=4)
    assert records and all("shared" in r.skipped for r in records)
    assert net[1] is conv and net[3] is conv


DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA")])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind, params", [("grouped", {"groups": 4}), ("separable", {"T": 2}),
                                          ("shuffle", {"groups": 2}), ("dilated", {}),
                                          ("bottleneck", {"rank": 8})])
def test_rewrite_on_device_matches_cpu(device, kind, params):
    torch.manual_seed(0)
    cpu = tiny_net()
    moved = copy.deepcopy(cpu).to(device)
    cpu_records = rewrite(cpu, kind, example_inputs=X[:1], min_channels=4, **params)
    records = rewrite(moved, kind, example_inputs=X[:1].to(device), min_channels=4, **params)
    assert [r.skipped for r in records] == [r.skipped for r in cpu_records]
    assert all(p.device.type == device for p in moved.parameters())
    assert [r.macs_after for r in records] == [r.macs_after for r in cpu_records]
    out = moved(X.to(device)).cpu()
    assert relative_error(out, cpu(X)) < 1e-4


class _Untraceable(nn.Module):
    """Runs its body without autograd, so torch-pruning's tracing sees no graph."""

    def __init__(self) -> None:
        super().__init__()
        self.body = tiny_net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.body(x)


def test_untraceable_model_keeps_its_permutes_with_the_reason():
    net = _Untraceable().double()
    reference = copy.deepcopy(net)
    x = X.double()
    (record,) = rewrite(net, "grouped", layers=["body.block.conv1"], example_inputs=x[:1], groups=4)
    rewrite(reference, "grouped", layers=["body.block.conv1"], example_inputs=x[:1], groups=4, absorb=False)
    assert all(s.startswith("not folded") for s in record.details["permutes"].values())
    assert relative_error(net(x), reference(x)) < 1e-12


@pytest.mark.parametrize("kind, params, match", [
    ("shuffle", {}, "groups: expected an integer >= 2"),
    ("separable", {"T": 2, "max_error": 0.1}, "max_error: expected null when T is set"),
    ("bottleneck", {"rank": 2, "rank_ratio": 0.5}, "only one"),
    ("grouped", {"groups": "many"}, "'auto'"),
    ("dilated", {"dilation": 0}, "dilation"),
])
def test_options_wrong_for_every_layer_raise_before_any_change(kind, params, match):
    net = tiny_net()
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(CompressError, match=match):
        rewrite(net, kind, **params)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_growing_rewrites_are_skipped_unless_allowed():
    net = tiny_net()
    (record,) = rewrite(net, "bottleneck", layers=["pw"], example_inputs=X[:1], rank=32)
    assert "grow" in record.skipped and record.params_after > record.params_before
    assert type(net.pw) is nn.Conv2d
    (record,) = rewrite(net, "bottleneck", layers=["pw"], example_inputs=X[:1], rank=32, allow_growth=True)
    assert record.skipped is None and isinstance(net.pw, nn.Sequential)


def test_a_permute_whose_group_runs_away_stays_with_the_reason_and_the_rewrite_stays_exact(monkeypatch):
    """tp's group construction can loop for ever (timm's global-context blocks): absorbing a permute is optional,
    so after GROUP_BUDGET_S the permute stays (reason recorded) and the model equals the unfolded rewrite."""
    import torch_pruning as tp

    from compress.transforms.prune import tp_compat

    torch.manual_seed(1)
    net = tiny_net().double()
    unfolded = copy.deepcopy(net)
    x = X.double()
    get_group = tp.DependencyGraph.get_pruning_group
    spins = []

    def runaway(self, module, fn, idxs):
        if isinstance(module, ChannelPermute):
            spins.append(module)
            while True:  # pure Python, like tp's index-map cycle
                pass
        return get_group(self, module, fn, idxs)

    monkeypatch.setattr(tp_compat, "GROUP_BUDGET_S", 0.2)
    monkeypatch.setattr(tp.DependencyGraph, "get_pruning_group", runaway)
    records = _by_layer(rewrite(net, "grouped", include=["block.conv1"], example_inputs=x[:1], groups=4))
    rewrite(unfolded, "grouped", include=["block.conv1"], example_inputs=x[:1], groups=4, absorb=False)
    statuses = records["block.conv1"].details["permutes"]
    assert set(statuses) == {"permute_in", "permute_out"}
    assert all(s.count(tp_compat.RUNAWAY) == 2 for s in statuses.values())  # downstream and upstream both tried
    assert len(spins) == 4  # each side of each permute once: a later round does not try them again
    assert relative_error(net(x), unfolded(x)) < 1e-12


class _ReadsWeight(nn.Module):
    """A forward that reads a conv's ``weight`` (as timm's EdgeNeXt positional encoding does): no replacement
    module has one, so rewriting ``probe`` must be rolled back while ``body``'s convs are still rewritten."""

    def __init__(self) -> None:
        super().__init__()
        self.probe = nn.Conv2d(16, 16, 1)  # eligible, never run: only its weight's dtype is read
        self.body = tiny_net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.to(self.probe.weight.dtype))


@pytest.mark.parametrize("kind", ["grouped", "bottleneck"])
def test_a_rewrite_the_models_forward_cannot_run_with_is_rolled_back_with_the_reason(kind):
    net = _ReadsWeight().double()
    reference = copy.deepcopy(net)
    x = X.double()
    records = _by_layer(rewrite(net, kind, example_inputs=x[:1],
                                **({"groups": 2} if kind == "grouped" else {"rank_ratio": 0.5})))
    assert records["probe"].skipped.startswith("the model's forward fails with this layer replaced: "
                                               "AttributeError")
    assert type(net.probe) is nn.Conv2d and torch.equal(net.probe.weight, reference.probe.weight)
    rewritten = [name for name, r in records.items() if r.skipped is None]
    assert rewritten and all(repr(net.get_submodule(n)) != repr(reference.get_submodule(n)) for n in rewritten)
    assert torch.isfinite(net(x)).all() and net(x).shape == reference(x).shape


def test_without_example_inputs_nothing_is_run_or_rolled_back():
    net = _ReadsWeight()
    records = _by_layer(rewrite(net, "grouped", groups=2, include=["probe"]))
    assert records["probe"].skipped is None
    with pytest.raises(AttributeError, match="weight"):
        net(X)
