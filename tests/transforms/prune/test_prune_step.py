"""The ``prune`` recipe step: strict config validation and the handler on a minimal run context."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from compress.analysis.dead import DeadChannel
from compress.errors import ConfigError
from compress.recipe import registry
from compress.transforms.prune.step import PruneStep, prune_step


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.relu(self.bn2(self.conv2(x))).mean(dim=(2, 3)))


@pytest.fixture
def _ctx(step_context):
    def make(analysis=None):
        calib = [(torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))) for _ in range(3)]
        return step_context(TinyNet().eval(), calib=calib, example_inputs=torch.randn(1, 3, 8, 8), analysis=analysis)

    return make


def test_step_is_registered():
    assert registry._STEPS["prune"].config is PruneStep


@pytest.mark.parametrize("data, field", [
    ({"ratio": 1.0}, "ratio"),
    ({"ratio": 0.3, "macs_target": 0.5}, "macs_target"),
    ({"macs_target": 1.5}, "macs_target"),
    ({"remove_dead": False}, "ratio"),
    ({"ratio": 0.3, "importance": "fisher"}, "importance"),
    ({"ratio": 0.3, "per_layer": {"conv*": 1.2}}, "per_layer.conv*"),
    ({"ratio": 0.3, "round_to": 0}, "round_to"),
    ({"ratio": 0.3, "calib_batches": 0}, "calib_batches"),
    ({"ratio": 0.3, "time_budget_s": 0}, "time_budget_s"),
    ({"ratio": 0.3, "time_budget_s": -5.0}, "time_budget_s"),
    ({"ratio": 0.3, "bogus": 1}, "bogus"),
])
def test_bad_config_names_the_field(data, field):
    with pytest.raises(ConfigError) as err:
        PruneStep.from_dict(data, path="steps[0].prune")
    assert err.value.field == f"steps[0].prune.{field}"


def test_config_parses_lists_and_mappings():
    cfg = PruneStep.from_dict({"macs_target": 0.5, "ignored_layers": ["fc", "layer4.*"], "per_layer": {"a*": 0.1},
                               "importance": "taylor"})
    assert cfg.ignored_layers == ("fc", "layer4.*") and cfg.per_layer == {"a*": 0.1} and cfg.ratio is None


def test_handler_prunes_ctx_model_and_returns_typed_details(_ctx):
    ctx = _ctx()
    record = prune_step(ctx, PruneStep.from_dict({"ratio": 0.25, "importance": "taylor"}))
    assert ctx.model.conv1.out_channels == 12 and ctx.model.fc.out_features == 4
    assert record.result.macs_after < record.result.macs_before and record.result.channels_after["conv1"] == 12
    details = record.to_plain()
    assert details["macs_after"] == record.result.macs_after and details["layers"]["conv1"] == [16, 12]
    json.dumps(details)


def test_handler_removes_dead_channels_and_invalidates_the_analysis(_ctx):
    ctx = _ctx()
    ctx.model.bn1.weight.data[[0, 9]] = 0.0
    ctx.model.bn1.bias.data[[0, 9]] = -1.0

    class Analysis:
        def dead_channels(self):
            return {"conv1": {0: DeadChannel("zero_gamma", 0.0), 9: DeadChannel("zero_gamma", 0.0)}}

    ctx.analysis = Analysis()
    details = prune_step(ctx, PruneStep.from_dict({}))  # remove_dead only
    assert ctx.model.conv1.out_channels == 14 and details.result.dead.channels_removed == 2
    assert ctx.analysis is None and details.analysis_invalidated
