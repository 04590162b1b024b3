"""apply_plan: removes exactly the planned channels, keeps shapes, and is exact when only dead channels go."""
from __future__ import annotations

import copy

import pytest
import torch

from compress.analysis import analyze
from compress.errors import CompressError
from compress.planning import LayerChoice, Plan, apply_plan, plan

from planning_helpers import tiny_net

DEAD = [1, 4, 6, 9, 11, 20, 27, 30]  # output channels of conv "3" (32 wide) that carry exactly zero


def dead_net() -> torch.nn.Sequential:
    """tiny_net whose conv "3" has 8 dead channels: zero filters, zero BN scale and shift -> ReLU(0) = 0."""
    model = tiny_net()
    with torch.no_grad():
        model[3].weight[DEAD] = 0.0
        model[4].weight[DEAD] = 0.0
        model[4].bias[DEAD] = 0.0
        for bn in (model[1], model[4], model[7], model[10]):  # non-trivial statistics for the other channels
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    return model


def test_dead_channel_plan_is_exact(x, tmp_path):
    model = dead_net()
    torch.manual_seed(2)
    calib = [torch.randn(8, 3, 16, 16) for _ in range(3)]
    analysis = analyze(model, calib, verbose=False)
    dead = analysis.dead_channels()["3"]
    assert sorted(c for c, d in dead.items() if d.kind != "apoz") == DEAD  # apoz channels are not free
    # a target one aligned step below the original: the free (dead) channels are the cheapest way there
    p = plan(model, x, target={"macs": 0.995}, batch=2, forms=("prune",), analysis=analysis, decrement=0.001,
             measure_latency=False, cache_dir=str(tmp_path), verbose=False)
    assert p.met and len(p.choices) == 1
    choice = p.choices[0]
    assert (choice.layer, choice.width_from, choice.width_to, choice.cost) == ("3", 32, 24, 0.0)
    assert choice.removed == DEAD
    pruned = apply_plan(copy.deepcopy(model), p, x)
    assert pruned[3].out_channels == 24 and pruned[6].in_channels == 24
    batch = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(pruned(batch), model(batch), rtol=1e-5, atol=1e-6)


def test_rewrites_keep_shapes_and_record_forms(x, tmp_path):
    model = tiny_net()
    p = plan(model, x, target={"macs": 0.5}, batch=2, forms=("grouped", "separable"), measure_latency=False,
             cache_dir=str(tmp_path), verbose=False)
    assert p.choices and all(c.form in ("grouped", "separable") for c in p.choices)
    rewritten = apply_plan(copy.deepcopy(model), p, x)
    names = dict(rewritten.named_modules())
    for c in p.choices:
        assert not isinstance(names[c.layer], torch.nn.Conv2d) or names[c.layer].groups > 1
    assert rewritten(x).shape == model(x).shape


def test_plan_for_another_model_is_refused(x):
    model = tiny_net()
    wrong = Plan(target={"macs": 0.5}, device="cpu", dtype="float32", batch=1, channels_last=False, align=8,
                 choices=[LayerChoice("3", "prune", 48, 40, ["3"], list(range(8)))])
    with pytest.raises(CompressError, match="apply a plan only to the model it was made for"):
        apply_plan(model, wrong, x)
    missing = Plan(target={"macs": 0.5}, device="cpu", dtype="float32", batch=1, channels_last=False, align=8,
                   choices=[LayerChoice("body.conv", "prune", 32, 24, [], list(range(8)))])
    with pytest.raises(CompressError, match="body.conv"):
        apply_plan(model, missing, x)
