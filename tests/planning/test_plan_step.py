"""Recipe step ``plan``: strict options, and a handler that plans, applies and reports on the run's model."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from compress.config import parse
from compress.errors import ConfigError
from compress.measurement import cost
from compress.planning.step import PlanStep, plan_step
from compress.recipe.registry import _STEPS

from planning_helpers import tiny_net


def test_registered():
    assert _STEPS["plan"].config is PlanStep and _STEPS["plan"].handler is plan_step


def test_defaults_and_parsing():
    cfg = parse(PlanStep, {"target": {"latency": 0.5}, "forms": ["prune", "shuffle"], "dtype": "bfloat16"})
    assert cfg.target == {"latency": 0.5} and cfg.forms == ("prune", "shuffle")
    assert (cfg.device, cfg.batch, cfg.channels_last, cfg.cache_dir) == ("cpu", 64, False, None)
    assert cfg.fold_bn is True and parse(PlanStep, {"target": {"macs": 0.5}, "fold_bn": False}).fold_bn is False


def test_issue_spelling_of_the_recipe_parses():
    cfg = parse(PlanStep, {"device": "cuda", "batch": 64, "dtype": "bf16", "target": {"latency": 0.5}})
    assert (cfg.device, cfg.batch, cfg.dtype, cfg.target) == ("cuda", 64, "bf16", {"latency": 0.5})


@pytest.mark.parametrize("data, field", [
    ({}, "target"),
    ({"target": {"latency": 0.5, "macs": 0.5}}, "target"),
    ({"target": {"speed": 0.5}}, "target"),
    ({"target": {"macs": 0.0}}, "target.macs"),
    ({"target": {"params": 1.2}}, "target.params"),
    ({"target": {"macs": 0.5}, "forms": []}, "forms"),
    ({"target": {"macs": 0.5}, "forms": ["prune", "dilated"]}, "forms"),
    ({"target": {"macs": 0.5}, "batch": 0}, "batch"),
    ({"target": {"macs": 0.5}, "device": "tpu"}, "device"),
    ({"target": {"macs": 0.5}, "dtype": "int8"}, "dtype"),
    ({"target": {"macs": 0.5}, "fold_bn": "yes"}, "fold_bn"),
])
def test_bad_options(data, field):
    with pytest.raises(ConfigError) as err:
        parse(PlanStep, data, path="steps[3].plan")
    assert err.value.field == f"steps[3].plan.{field}"


def test_handler_plans_applies_and_reports(tmp_path, x, step_context):
    model = tiny_net()
    original = copy.deepcopy(model)
    torch.manual_seed(3)
    calib = [(torch.randn(4, 3, 16, 16), torch.zeros(4, dtype=torch.long)) for _ in range(6)]
    ctx = step_context(model, calib=calib, example_inputs=x)
    cfg = parse(PlanStep, {"target": {"macs": 0.6}, "batch": 2, "forms": ["prune"], "calib_batches": 2,
                           "cache_dir": str(tmp_path)})
    record = plan_step(ctx, cfg)
    details = record.to_plain()
    json.dumps(details)
    assert record.plan.macs_ratio == details["macs_ratio"]
    ratio = cost(ctx.model, x).macs / cost(original, x).macs
    assert details["met"] and details["macs_ratio"] == pytest.approx(ratio) and ratio <= 0.62
    assert details["choices"] and details["summary"][0] == details["verdict"]
    assert details["latency"]["batch"] == 2 and details["latency"]["bn_folded"] is True  # the step's default
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in ctx.model.modules())  # the model keeps its BNs
    assert any(v in details["verdict"] for v in ("faster by", "SLOWER by", "no measurable difference"))
    assert ctx.analysis is None and ctx.model(x).shape == (1, 10)


def test_reconstruct_option_refits_after_the_plan_and_records_both_accuracies(tmp_path, x, step_context):
    """``reconstruct: true`` refits the planned model towards the original: on held-out inputs its outputs come
    closer to the original's than the same plan's without it, and the details carry the records and the top-1
    measured before the refit."""
    from compress.transforms.rewrite.decompose import relative_error

    torch.manual_seed(3)
    calib = [(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))) for _ in range(6)]
    held_out = torch.randn(32, 3, 16, 16)
    outputs = {}
    for reconstruct in (False, True):
        model = tiny_net()
        original = copy.deepcopy(model)
        ctx = step_context(model, calib=calib, example_inputs=x, baseline=original, num_classes=10)
        cfg = parse(PlanStep, {"target": {"macs": 0.6}, "batch": 2, "forms": ["prune"], "calib_batches": 4,
                               "cache_dir": str(tmp_path), "reconstruct": reconstruct})
        details = plan_step(ctx, cfg)
        plain = json.loads(json.dumps(details.to_plain(), allow_nan=False))
        with torch.no_grad():
            outputs[reconstruct] = relative_error(ctx.model(held_out), original(held_out))
        if reconstruct:
            assert plain["reconstruction_summary"]["fitted"] >= 2
            assert 0.0 <= details.top1_before_reconstruction <= 1.0
        else:
            assert plain["reconstruction"] is None and plain["top1_before_reconstruction"] is None
    assert outputs[True] < outputs[False]


def test_reconstruct_option_is_checked():
    with pytest.raises(ConfigError) as err:
        parse(PlanStep, {"target": {"macs": 0.5}, "reconstruct": "yes"}, path="steps[2].plan")
    assert err.value.field == "steps[2].plan.reconstruct"
