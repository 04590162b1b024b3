"""The ``rewrite`` recipe step: option validation per kind and the handler's result."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from compress.config import parse
from compress.errors import ConfigError
from compress.recipe import registry
from compress.transforms.rewrite.step import RewriteStep, run_rewrite


@pytest.mark.parametrize("data", [
    {"kind": "grouped"},
    {"kind": "grouped", "groups": "auto", "energy_threshold": 0.8},
    {"kind": "grouped", "groups": 4, "layers": ["layer1.*"], "exclude": ["layer1.0.*"]},
    {"kind": "separable", "T": 2},
    {"kind": "separable", "max_error": 0.2},
    {"kind": "shuffle", "groups": 4, "width": 64},
    {"kind": "dilated", "dilation": 2, "min_channels": 1},
    {"kind": "bottleneck", "rank": 8},
    {"kind": "bottleneck", "rank_ratio": 0.25},
])
def test_valid_options_parse(data):
    cfg = parse(RewriteStep, data)
    assert cfg.kind == data["kind"]


@pytest.mark.parametrize("data, field", [
    ({"kind": "separable", "T": 2, "max_error": 0.1}, "max_error"),
    ({"kind": "bottleneck", "rank": 2, "rank_ratio": 0.5}, "rank_ratio"),
    ({"kind": "grouped", "T": 2}, "T"),
    ({"kind": "dilated", "groups": 2}, "groups"),
    ({"kind": "shuffle"}, "groups"),
    ({"kind": "shuffle", "groups": "auto"}, "groups"),
    ({"kind": "grouped", "groups": "many"}, "groups"),
    ({"kind": "grouped", "groups": 0}, "groups"),
    ({"kind": "separable", "T": 0}, "T"),
    ({"kind": "bottleneck", "rank_ratio": 1.5}, "rank_ratio"),
    ({"kind": "bottleneck", "max_error": 1.0}, "max_error"),
    ({"kind": "grouped", "energy_threshold": 0.0}, "energy_threshold"),
    ({"kind": "grouped", "min_channels": 0}, "min_channels"),
    ({"kind": "pruned"}, "kind"),
    ({"kind": "grouped", "rnak": 3}, "rnak"),
])
def test_invalid_options_name_the_field(data, field):
    with pytest.raises(ConfigError) as err:
        parse(RewriteStep, data, path="steps[2].rewrite")
    assert err.value.field == f"steps[2].rewrite.{field}"


def test_options_passed_to_the_applier():
    def options(data):
        return parse(RewriteStep, data).kind_options().kwargs()

    assert options({"kind": "grouped"}) == {"groups": "auto", "energy_threshold": 0.9}
    assert options({"kind": "separable", "max_error": 0.2}) == {"T": None, "max_error": 0.2, "macs_target": None}
    assert options({"kind": "dilated"}) == {"dilation": None}


def test_step_is_registered(monkeypatch):
    monkeypatch.setattr(registry, "STEP_MODULES", ("compress.transforms.rewrite.step",))
    spec = registry.get_step("rewrite")
    assert spec.config is RewriteStep and spec.handler is run_rewrite


def test_handler_rewrites_the_context_model(step_context):
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))
    ctx = step_context(model, example_inputs=torch.randn(1, 3, 16, 16))
    cfg = parse(RewriteStep, {"kind": "separable", "T": 2, "exclude": ["4"]})
    details = run_rewrite(ctx, cfg)
    assert details.rewritten == 1
    (layer,) = details.layers
    assert layer.layer == "2" and layer.params == {"T": 2} and layer.skipped is None
    assert isinstance(model[2], nn.Sequential) and type(model[4]) is nn.Conv2d
    (plain,) = json.loads(json.dumps(details.to_plain()))["layers"]
    assert plain["layer"] == "2" and plain["weight_error"] == layer.weight_error
    assert model(ctx.example_inputs).shape == (1, 4)


class _ReadsWeight(nn.Sequential):
    """A forward that reads the last conv's ``weight`` (as timm's EdgeNeXt does): no replacement has one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(self[4].weight.dtype))


def test_a_layer_the_forward_cannot_run_without_is_kept_dense_and_the_report_notes_it(step_context):
    model = _ReadsWeight(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))
    ctx = step_context(model, example_inputs=torch.randn(1, 3, 16, 16))
    details = run_rewrite(ctx, parse(RewriteStep, {"kind": "separable", "T": 2}))
    assert [r.layer for r in details.layers if r.skipped is None] == ["2"] and type(model[4]) is nn.Conv2d
    (note,) = details.report_notes()
    assert note.startswith("4 kept dense: the model's forward fails with this layer replaced: AttributeError")
    assert model(ctx.example_inputs).shape == (1, 4)
