"""plan(): targets met (MACs/params by formula), latency reported honestly, bad input rejected."""
from __future__ import annotations

import copy
import re

import pytest
import torch

from compress.errors import CompressError
from compress.measurement import Stats, cost
from compress.measurement.latency import Comparison, LatencyResult, LatencySettings
from compress.planning import apply_plan, plan
from compress.planning import planner as planner_mod



def check_verdict(p) -> None:
    """The verdict states exactly the measured numbers of the plan's latency row."""
    row = p.latency
    assert f"{row['baseline_ms']:.3f} ms -> {row['compressed_ms']:.3f} ms" in p.verdict
    speedup = row["baseline_ms"] / row["compressed_ms"]
    expected = f"faster by {speedup:.2f}x" if speedup >= 1 else f"SLOWER by {1 / speedup:.2f}x on cpu"
    assert expected in p.verdict


@pytest.mark.parametrize("metric", ["macs", "params"])
def test_formula_targets_are_met(net, x, tmp_path, metric):
    target = 0.6
    p = plan(net, x, target={metric: target}, batch=4, forms=("prune",), tolerance=0.02, measure_latency=False,
             cache_dir=str(tmp_path), verbose=False)
    assert p.met and p.choices and all(c.form == "prune" and c.unit == metric for c in p.choices)
    assert target - 0.15 <= p.measured_ratio <= target + 0.02
    assert abs(p.predicted_ratio - p.measured_ratio) < 0.05  # formulas track the real count closely
    pruned = apply_plan(copy.deepcopy(net), p, x)
    before, after = cost(net, x), cost(pruned, x)
    assert getattr(after, metric) / getattr(before, metric) == pytest.approx(p.measured_ratio)
    assert after.macs / before.macs == pytest.approx(p.macs_ratio)
    for c in p.choices:
        assert c.width_to % 8 == 0 and len(c.removed) == c.width_from - c.width_to
    assert p.verdict.startswith(f"{metric} target 0.6x: met") and "latency not measured" in p.verdict
    assert pruned(x).shape == net(x).shape


def test_latency_target_reports_measured_numbers(net, x, tmp_path):
    model_before = copy.deepcopy(net.state_dict())
    p = plan(net, x, target={"latency": 0.7}, batch=8, forms=("prune", "grouped", "separable"), max_iters=2,
             table_runs=2, cache_dir=str(tmp_path), verbose=False)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in model_before.items())  # plan never mutates
    assert 1 <= len(p.iterations) <= 2 and p.iterations[-1].index == len(p.iterations)
    assert p.table["measured"] > 0 and p.table["batch"] == 8 and p.table["dtype"] == "float32"
    assert p.device == "cpu" and p.align == 8 and p.metric == "latency"
    for c in p.choices:
        assert c.unit == "ms" and c.predicted_ms_saved is not None and c.predicted_saved > 0 and c.cost >= 0
    row = p.latency
    assert row["batch"] == 8 and row["runs"] == 20
    assert p.measured_ratio == pytest.approx(row["compressed_ms"] / row["baseline_ms"])
    assert p.met == (p.measured_ratio <= 0.7 + p.tolerance)
    assert ("met" if p.met else "NOT MET") in p.verdict
    check_verdict(p)
    planned = apply_plan(copy.deepcopy(net), p, x)
    assert planned(x.expand(3, -1, -1, -1)).shape == (3, 10)
    assert cost(planned, x).macs / cost(net, x).macs == pytest.approx(p.macs_ratio)
    d = p.as_dict()
    assert d["target"] == {"latency": 0.7} and len(d["choices"]) == len(p.choices)


def fake_comparison(base_ms: float, planned_ms: float) -> Comparison:
    settings = LatencySettings(device="cpu", dtype="float32", channels_last=False, compiled=False, threads=1,
                               warmup=0, runs=20)
    results = {}
    for name, ms in (("original", base_ms), ("planned", planned_ms)):
        res = LatencyResult(settings)
        res.stats[4] = Stats(median_ms=ms, q1_ms=ms * 0.99, q3_ms=ms * 1.01, min_ms=ms * 0.98, runs=20)
        results[name] = res
    return Comparison(names=["original", "planned"], results=results)


def test_a_slower_plan_is_called_slower(net, x, tmp_path, monkeypatch):
    monkeypatch.setattr(planner_mod, "compare_latency", lambda *a, **k: fake_comparison(10.0, 12.0))
    p = plan(net, x, target={"macs": 0.7}, batch=4, forms=("prune",), cache_dir=str(tmp_path), verbose=False)
    assert p.met  # the MACs target is met...
    assert "SLOWER by 1.20x on cpu" in p.verdict  # ...but the slow-down is said out loud
    check_verdict(p)


def test_unreachable_latency_target_is_not_met(net, x, tmp_path, monkeypatch):
    monkeypatch.setattr(planner_mod, "compare_latency", lambda *a, **k: fake_comparison(10.0, 9.0))
    p = plan(net, x, target={"latency": 0.1}, batch=4, forms=("prune",), max_iters=3, table_runs=1,
             cache_dir=str(tmp_path), verbose=False)
    assert not p.met and p.measured_ratio == pytest.approx(0.9)
    assert re.search(r"latency target 0\.1x: NOT MET \(measured 0\.900x", p.verdict)
    assert len(p.iterations) == 1  # the search ran out of moves; tightening could not help


@pytest.mark.parametrize("target", [{"latency": 0.5, "macs": 0.5}, {"speed": 0.5}, {"latency": 0.0},
                                    {"macs": 1.5}, {"params": True}, [0.5], {}])
def test_bad_targets_rejected(net, x, target):
    with pytest.raises(CompressError, match="plan target"):
        plan(net, x, target=target, verbose=False)


def test_bad_options_rejected(net, x):
    with pytest.raises(CompressError, match="forms"):
        plan(net, x, target={"macs": 0.5}, forms=("prune", "dilated"), verbose=False)
    with pytest.raises(CompressError, match="batch"):
        plan(net, x, target={"macs": 0.5}, batch=0, verbose=False)
    with pytest.raises(CompressError, match="CUDA"):
        if torch.cuda.is_available():
            raise CompressError("CUDA present: nothing to check")
        plan(net, x, target={"latency": 0.5}, device="cuda", verbose=False)


def test_residual_groups_are_planned_together(tmp_path):
    from compress.models import build_model

    torch.manual_seed(0)
    model = build_model({"name": "compress:small_resnet", "kwargs": {"widths": [16, 32, 64]}}).eval()
    x = torch.randn(1, 1, 16, 16)
    p = plan(model, x, target={"macs": 0.6}, batch=2, forms=("prune",), measure_latency=False,
             cache_dir=str(tmp_path), verbose=False)
    assert p.met
    pruned = apply_plan(copy.deepcopy(model), p, x)
    assert pruned(x).shape == (1, 10)
    stage = [c for c in p.choices if c.layer in ("layers.2.0.downsample.0", "layers.2.0.conv2")]
    assert len(stage) <= 1
    if stage:  # the residual stream's convs all took the same width
        assert {"layers.2.0.conv2", "layers.2.0.downsample.0"} <= set(stage[0].members)
        width = stage[0].width_to
        assert pruned.layers[2][0].conv2.out_channels == width == pruned.layers[2][0].downsample[0].out_channels
        assert pruned.fc.in_features == width


def test_closed_loop_reaims_the_goal():
    nxt = planner_mod._next_goal
    # missed: 0.5 predicted measured 0.6, so 80% of a predicted saving shows; aim where 0.5 would be measured
    assert nxt(0.5, 0.6, 0.5, 0.02, 0.05, exhausted=False) == pytest.approx(1 - 0.5 / 0.8)
    assert planner_mod._aim(0.375, 1 - 0.8 * 0.625, 0.5) == pytest.approx(0.375)  # consistent with the model
    assert nxt(0.45, 0.52, 0.5, 0.01, 0.05, exhausted=False) == pytest.approx(0.425)  # at least half a step more
    assert nxt(0.6, 1.2, 0.5, 0.02, 0.05, exhausted=False) == pytest.approx(0.25)  # slower: the error as a factor
    assert nxt(0.6, 0.7, 0.5, 0.02, 0.05, exhausted=True) is None  # nothing left to prune
    assert nxt(0.47, 0.83, 0.5, 0.02, 0.05, exhausted=False) == 1e-6  # little of the saving shows: go all the way
    assert nxt(0.5, 0.49, 0.5, 0.02, 0.05, exhausted=False) is None  # met, close to the target
    # beaten by far (140% of the predicted saving showed): aim higher to give accuracy back
    assert nxt(0.5, 0.3, 0.5, 0.02, 0.05, exhausted=False) == pytest.approx(1 - 0.5 / 1.4)


def test_best_round_is_the_cheapest_that_met():
    from compress.planning import LayerChoice

    def round_(met, ratio, cost):
        return planner_mod._Round(met, [LayerChoice("c", "prune", 16, 8, cost=cost)], ratio, {"latency": ratio},
                                  None, [])

    better = planner_mod._better
    assert better(round_(True, 0.5, 2.0), round_(False, 0.4, 0.1), "latency")
    assert better(round_(True, 0.49, 1.0), round_(True, 0.3, 2.0), "latency")
    assert not better(round_(False, 0.7, 0.1), round_(False, 0.6, 0.5), "latency")
    assert better(round_(False, 0.6, 0.5), None, "latency")
