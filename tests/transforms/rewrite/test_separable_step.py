"""The ``rewrite`` recipe step with ``kind: separable``: ``macs_target`` and ``calib_batches`` options."""
from __future__ import annotations


import pytest
import torch
from torch import nn

from compress.config import parse
from compress.errors import ConfigError
from compress.measurement import cost
from compress.transforms.rewrite.step import RewriteStep, run_rewrite


def test_macs_target_parses_and_reaches_the_applier():
    cfg = parse(RewriteStep, {"kind": "separable", "macs_target": 0.6})
    assert cfg.kind_options().kwargs() == {"T": None, "max_error": None, "macs_target": 0.6} and cfg.calib_batches == 8
    assert parse(RewriteStep, {"kind": "separable", "macs_target": 1, "calib_batches": 0}).calib_batches == 0


@pytest.mark.parametrize("data, field", [
    ({"kind": "separable", "macs_target": 0.0}, "macs_target"),
    ({"kind": "separable", "macs_target": 1.2}, "macs_target"),
    ({"kind": "separable", "macs_target": "half"}, "macs_target"),
    ({"kind": "separable", "T": 2, "macs_target": 0.5}, "macs_target"),
    ({"kind": "separable", "max_error": 0.3, "macs_target": 0.5}, "macs_target"),
    ({"kind": "grouped", "macs_target": 0.5}, "macs_target"),
    ({"kind": "separable", "calib_batches": -1}, "calib_batches"),
])
def test_bad_values_name_the_field(data, field):
    with pytest.raises(ConfigError) as err:
        parse(RewriteStep, data, path="steps[0].rewrite")
    assert err.value.field == f"steps[0].rewrite.{field}"


@pytest.fixture
def _ctx(step_context):
    def make(calib_batches: int):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                              nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(32, 4))
        images = torch.randn(8, 3, 12, 12)
        calib = [(images[:4], torch.zeros(4)), (images[4:], torch.zeros(4))]
        return step_context(model.eval(), calib=calib, example_inputs=torch.zeros(1, 3, 12, 12))

    return make


@pytest.mark.parametrize("calib_batches, data_aware", [(2, True), (0, False)])
def test_handler_meets_the_target_with_calibration_data(calib_batches, data_aware, _ctx):
    ctx = _ctx(calib_batches)
    before = cost(ctx.model, ctx.example_inputs).macs
    cfg = parse(RewriteStep, {"kind": "separable", "macs_target": 0.6, "calib_batches": calib_batches})
    details = run_rewrite(ctx, cfg)
    done = [layer for layer in details.layers if layer.skipped is None]
    assert done and details.rewritten == len(done) == details.to_plain()["rewritten"]
    assert all(layer.params.get("data_aware", False) is data_aware for layer in done)
    assert cost(ctx.model, ctx.example_inputs).macs <= 0.6 * before
