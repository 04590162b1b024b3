"""The torch-pruning uniform baseline used by the benchmarks."""
from __future__ import annotations

import pytest
import torch

from compress.errors import CompressError
from compress.measurement import cost
from compress.planning.uniform import uniform_at_macs, uniform_prune

from planning_helpers import tiny_net


def test_uniform_prune_is_a_pruned_copy(x):
    model = tiny_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    same = uniform_prune(model, x, ratio=0.0)
    assert same is not model and torch.equal(same(x), model(x))
    half = uniform_prune(model, x, ratio=0.5, round_to=8)
    assert [m.out_channels for m in half.modules() if isinstance(m, torch.nn.Conv2d)] == [8, 16, 16, 8]
    assert half(x).shape == (1, 10)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(CompressError, match="ratio"):
        uniform_prune(model, x, ratio=1.0)


def test_uniform_at_macs_stays_within_budget(x):
    model = tiny_net()
    budget = 0.6 * cost(model, x).macs
    pruned, ratio = uniform_at_macs(model, x, macs=budget, round_to=4, steps=6)
    got = cost(pruned, x).macs
    assert 0.0 < ratio <= 0.9 and got <= budget
    # no other tried ratio lands closer below the budget
    for k in range(1, 7):
        other = cost(uniform_prune(model, x, ratio=0.9 * k / 6, round_to=4), x).macs
        assert other > budget or other <= got
