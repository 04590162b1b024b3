"""Dropping residual blocks in the plan: priced from calibration data, predicted, applied, measured."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compress.measurement import cost
from compress.models import small_resnet
from compress.planning import Form, PlanOptions, apply_plan, plan
from compress.planning.blocks import BlockSite
from compress.planning.greedy import greedy
from compress.planning.predict import MacsResource, State, total
from compress.planning.problem import Problem, Site, build_problem
from compress.planning.shapes import ConvShape
from compress.planning.step import PlanStep

SHAPE = ConvShape(16, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, False, (8, 8), (8, 8))


class FixedTimes:
    """Every dense conv 1.0 ms, every rewrite 0.5 ms."""

    unit = "ms"

    def conv(self, site, out_width, in_width, form):
        return 1.0 if form is None else 0.5


def two_block_problem(drop_cost: float) -> Problem:
    form = Form("separable", 1)
    sites = {n: Site(n, SHAPE, forms=[form], form_costs={form.key: 0.5}, block="b" if n.startswith("b.") else None)
             for n in ("stem", "b.conv1", "b.conv2")}
    block = BlockSite("b", ["b.conv1", "b.conv2"], (16, 8, 8), drop_cost, overhead={"ms": 0.7})
    return Problem(sites, [], blocks={"b": block})


def test_a_dropped_block_saves_its_convs_and_its_overhead():
    problem = two_block_problem(0.1)
    full = State.initial(problem)
    assert total(problem, FixedTimes(), full) == pytest.approx(3.0)
    full.forms["b.conv1"] = Form("separable", 1)
    full.drop(problem, "b")
    assert "b.conv1" not in full.forms  # a dropped conv keeps no rewrite
    assert total(problem, FixedTimes(), full) == pytest.approx(1.0 - 0.7)
    assert total(problem, FixedTimes(), full, ["b.conv1", "stem"]) == pytest.approx(1.0)  # no overhead in parts


@pytest.mark.parametrize("drop_cost, dropped", [(0.0, True), (50.0, False)])
def test_greedy_drops_a_block_when_it_is_cheapest_per_saving(drop_cost, dropped):
    problem = two_block_problem(drop_cost)
    state, moves = greedy(problem, FixedTimes(), other=1.0, target=2.6, decrement=0.3)
    assert ("b" in state.dropped) == dropped
    assert any(m.block == "b" for m in moves) == dropped
    if not dropped:  # rewrites (cost 0.5 for 0.5 ms) beat the drop (50 for 2.7 ms)
        assert state.forms


def resnet_with_silent_block() -> tuple[nn.Module, torch.Tensor, list]:
    """A small ResNet whose block ``layers.0.1`` has a zero branch (dropping it is exact), with data."""
    torch.manual_seed(0)
    net = small_resnet(widths=(16, 16, 32), blocks=(2, 1, 1), in_channels=1)
    for bn in net.modules():
        if isinstance(bn, nn.BatchNorm2d):  # non-trivial BN statistics, as after training
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    silent = net.layers[0][1].bn2
    nn.init.zeros_(silent.weight)
    nn.init.zeros_(silent.bias)
    batches = [(torch.randn(8, 1, 16, 16), torch.zeros(8, dtype=torch.long)) for _ in range(2)]
    return net.eval(), torch.randn(1, 1, 16, 16), batches


def test_problem_prices_blocks_only_with_measured_errors():
    net, x, _ = resnet_with_silent_block()
    without = build_problem(net, x, kinds=("prune", "drop"), align=8)
    assert not without.blocks and any("no calibration data" in n for n in without.notes)
    with_errors = build_problem(net, x, kinds=("prune", "drop"), align=8,
                                drop_errors={"layers.0.0": 0.2, "layers.0.1": 0.0})
    assert set(with_errors.blocks) == {"layers.0.0", "layers.0.1"}
    assert with_errors.blocks["layers.0.1"].cost == 0.0 and with_errors.blocks["layers.0.0"].cost == pytest.approx(0.25)
    assert with_errors.blocks["layers.0.0"].in_shape == (16, 16, 16)
    for name in ("layers.0.1.conv1", "layers.0.1.conv2"):
        assert with_errors.sites[name].block == "layers.0.1"


def test_macs_plan_drops_the_silent_block_first_and_predicts_its_macs():
    net, x, batches = resnet_with_silent_block()
    reference = copy.deepcopy(net)
    p = plan(net, x, PlanOptions(target={"macs": 0.8}, forms=("prune", "drop"), calib_batches=2, batch=2,
             measure_latency=False), calib=batches, verbose=False)
    drops = [c for c in p.choices if c.form == "drop"]
    assert [c.layer for c in drops] == ["layers.0.1"] and drops[0].cost == 0.0
    assert drops[0].members == ["layers.0.1.conv1", "layers.0.1.conv2"]
    assert p.met and abs(p.predicted_ratio - p.measured_ratio) < 0.03  # block overheads counted, no surprise
    planned = apply_plan(copy.deepcopy(net), p, x)
    assert isinstance(planned.layers[0][1], nn.Identity)
    assert cost(planned, x).macs / cost(net, x).macs == pytest.approx(p.measured_ratio)
    with torch.no_grad():  # the plan never touches the model it was made for
        assert torch.equal(net(batches[0][0]), reference(batches[0][0]))


def test_exact_drop_alone_keeps_the_outputs():
    net, x, batches = resnet_with_silent_block()
    p = plan(net, x, PlanOptions(target={"params": 0.95}, forms=("drop",), calib_batches=2, batch=2,
             measure_latency=False), calib=batches, verbose=False)
    assert [c.layer for c in p.choices] == ["layers.0.1"]
    planned = apply_plan(copy.deepcopy(net), p, x)
    with torch.no_grad():
        torch.testing.assert_close(planned(batches[1][0]), net(batches[1][0]), rtol=1e-5, atol=1e-5)


def test_latency_plan_measures_block_overheads(tmp_path):
    net, x, batches = resnet_with_silent_block()
    p = plan(net, x, PlanOptions(target={"latency": 0.9}, forms=("drop",), calib_batches=2, batch=1, max_iters=1,
             table_runs=2, cache_dir=str(tmp_path)), calib=batches, verbose=False)
    note = next(n for n in p.notes if n.startswith("droppable blocks"))
    assert "layers.0.0" in note and "layers.0.1" in note
    assert all(c.form == "drop" and c.unit == "ms" and c.predicted_saved > 0 for c in p.choices)
    assert p.latency is not None and p.measured_ratio == pytest.approx(
        p.latency["compressed_ms"] / p.latency["baseline_ms"])


def test_plan_step_accepts_drop():
    assert "drop" in PlanStep(target={"latency": 0.5}, forms=("prune", "drop")).forms
