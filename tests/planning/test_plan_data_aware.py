"""Separable rewrites in a plan are priced and built data-aware when the plan has calibration data."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compress.planning import PlanOptions, apply_plan, plan
from compress.planning.candidates import Form
from compress.planning.costs import rewrite_cost
from compress.transforms import rewrite
from compress.transforms.rewrite.patch_stats import capture_patch_moments
from planning_helpers import tiny_net


def correlated_batches(count: int = 2) -> list[torch.Tensor]:
    """Smooth images: neighbouring pixels correlated, so patch moments are far from white."""
    torch.manual_seed(3)
    return [nn.functional.avg_pool2d(torch.randn(8, 3, 20, 20), 5, stride=1) for _ in range(count)]


def separable_plan(calib):
    net = tiny_net()
    x = torch.randn(1, 3, 16, 16)
    p = plan(net, x, PlanOptions(target={"macs": 0.8}, forms=("separable",), calib_batches=2, batch=2,
             measure_latency=False), calib=calib, verbose=False)
    return net, x, p


def test_separable_costs_use_the_patch_moments():
    batches = correlated_batches()
    net, x, p = separable_plan(batches)
    assert p.choices and all(c.form == "separable" for c in p.choices)
    modules = dict(net.named_modules())
    moments = capture_patch_moments(net, {c.layer: modules[c.layer] for c in p.choices}, batches)
    for c in p.choices:
        conv, form = modules[c.layer], Form("separable", c.params["T"])
        assert c.cost == pytest.approx(rewrite_cost(conv, form, moments=moments[c.layer]))
        assert c.cost != pytest.approx(rewrite_cost(conv, form), rel=1e-3)  # not the data-free price


def test_apply_plan_with_calib_builds_the_data_aware_rewrite():
    batches = correlated_batches()
    net, x, p = separable_plan(batches)
    planned = apply_plan(copy.deepcopy(net), p, x, calib=batches)
    reference = copy.deepcopy(net)
    for c in p.choices:  # the rewrite step's data-aware build of the same layers
        rewrite(reference, "separable", layers=[c.layer], example_inputs=x, calib=batches, min_channels=1,
                **c.params)
    blind = apply_plan(copy.deepcopy(net), p, x)
    probe = batches[0]
    with torch.no_grad():
        torch.testing.assert_close(planned(probe), reference(probe), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(blind(probe), planned(probe), atol=1e-5)  # without data: another model
