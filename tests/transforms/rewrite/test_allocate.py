"""MACs-target allocation: the knapsack solver, and ``rewrite(..., kind="separable", macs_target=...)``."""
from __future__ import annotations

import copy
import itertools
import random

import pytest
import torch
from torch import nn

from compress.errors import CompressError
from compress.measurement import cost
from compress.transforms import rewrite
from compress.transforms.rewrite.allocate import Option, allocate, total
from compress.transforms.rewrite.patch_stats import capture_patch_moments
from compress.transforms.rewrite.kinds.separable import separable_errors


def _instance(seed: int) -> tuple[dict[str, list[Option]], float]:
    rnd = random.Random(seed)
    options = {}
    for layer in range(4):
        n = rnd.randint(2, 6)
        macs = sorted(rnd.sample(range(1, 100), n))
        errors = sorted((rnd.random() for _ in range(n)), reverse=True)
        options[f"l{layer}"] = [Option(m, e, i) for i, (m, e) in enumerate(zip(macs, errors))]
    low, high = (sum(f(o.macs for o in opts) for opts in options.values()) for f in (min, max))
    return options, rnd.uniform(low, high)


@pytest.mark.parametrize("seed", range(40))
def test_allocation_is_the_brute_force_optimum(seed):
    options, budget = _instance(seed)
    feasible = [c for c in itertools.product(*options.values()) if sum(o.macs for o in c) <= budget]
    best = min(sum(o.error for o in c) for c in feasible)
    got = allocate(options, budget)
    assert total(got)[0] <= budget
    assert total(got)[1] == pytest.approx(best, abs=1e-12)


def test_thinned_frontier_is_never_worse_than_a_seed():
    options, budget = _instance(7)
    seed = {n: opts[0] for n, opts in options.items()}
    got = allocate(options, budget, seeds=[seed], max_frontier=1)
    assert total(got)[0] <= budget and total(got)[1] <= total(seed)[1]


def test_infeasible_budget_raises():
    options = {"a": [Option(10, 1.0), Option(20, 0.0)], "b": [Option(5, 1.0)]}
    with pytest.raises(CompressError, match="cheapest"):
        allocate(options, 14)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
        nn.Conv2d(24, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5)).eval()


X = torch.randn(6, 3, 12, 12)
ELIGIBLE = ("3", "6", "9")


def _squared_error(net: nn.Module, chosen: dict[str, int]) -> float:
    """Summed squared data-aware relative errors of the original convs at the given multipliers (dense: 0)."""
    convs = {n: net.get_submodule(n) for n in ELIGIBLE}
    moments = capture_patch_moments(net, convs, X)
    return sum(float(separable_errors(convs[n], moments=moments[n])[t]) ** 2 for n, t in chosen.items())


def _chosen(records) -> dict[str, int]:
    return {r.layer: r.params["T"] for r in records if r.skipped is None}


@pytest.mark.parametrize("T", [2, 3, 4])
def test_target_meets_macs_and_beats_uniform_T_at_its_macs(T):
    net = _net()
    before = cost(net, X[:1]).macs
    uniform = copy.deepcopy(net)
    uniform_records = rewrite(uniform, "separable", example_inputs=X[:1], calib=X, T=T)
    fraction = cost(uniform, X[:1]).macs / before
    allocated = copy.deepcopy(net)
    records = rewrite(allocated, "separable", example_inputs=X[:1], calib=X, macs_target=fraction)
    assert cost(allocated, X[:1]).macs <= fraction * before
    assert _squared_error(net, _chosen(records)) <= _squared_error(net, _chosen(uniform_records)) + 1e-12
    assert all(r.params.get("data_aware") for r in records if r.skipped is None)
    assert allocated(X).shape == (6, 5)


def test_tighter_target_costs_error_and_loose_target_keeps_layers_dense():
    net = _net()
    before = cost(net, X[:1]).macs
    errors = []
    for target in (0.4, 0.6, 0.8):
        model = copy.deepcopy(net)
        records = rewrite(model, "separable", example_inputs=X[:1], calib=X, macs_target=target)
        assert cost(model, X[:1]).macs <= target * before
        errors.append(_squared_error(net, _chosen(records)))
    assert errors[0] >= errors[1] >= errors[2]
    model = copy.deepcopy(net)
    records = rewrite(model, "separable", example_inputs=X[:1], calib=X, macs_target=1.0)
    assert all("kept dense" in r.skipped for r in records)
    assert torch.equal(model(X), net(X))


def test_data_free_target_uses_weight_errors():
    net = _net()
    records = rewrite(net, "separable", example_inputs=X[:1], macs_target=0.6)
    done = [r for r in records if r.skipped is None]
    assert done and all("data_aware" not in r.params for r in done)
    assert all(r.details["allocation"]["macs_target"] == 0.6 for r in done)


@pytest.mark.parametrize("params, match", [
    ({"macs_target": 0.0}, "macs_target"), ({"macs_target": 1.5}, "macs_target"),
    ({"macs_target": True}, "macs_target"), ({"macs_target": 0.5, "T": 2}, "only one of"),
    ({"macs_target": 0.01}, "below the cheapest"),
])
def test_bad_targets_raise(params, match):
    with pytest.raises(CompressError, match=match):
        rewrite(_net(), "separable", example_inputs=X[:1], calib=X, **params)


def test_target_needs_example_inputs():
    with pytest.raises(CompressError, match="example_inputs"):
        rewrite(_net(), "separable", calib=X, macs_target=0.5)
