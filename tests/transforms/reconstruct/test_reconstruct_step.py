"""The ``reconstruct`` recipe step and the ``reconstruct: true`` option of prune / rewrite / drop: option errors
name the field, pruned channels are identified from the run's records after weights changed, an exactly
representable refit is exact, and a real run lands closer to the baseline's held-out logits."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

import compress
from compress.context import StepRecord
from compress.errors import ConfigError
from compress.recipe import registry
from compress.transforms.blocks.step import DropStep
from compress.transforms.prune.step import PruneStep, prune_step
from compress.transforms.reconstruct.step import (ReconstructDetails, ReconstructStep, reconstruct_step,
                                                  recorded_channels)
from compress.transforms.rewrite.step import RewriteDetails, RewriteStep
from compress.transforms.rewrite.apply import RewriteRecord

from reconstruct_helpers import ConvNet, batches, calibrated, logit_error

EXACT = 1e-4  # float32 held-out logits, relative L2
TINY_RIDGE = 1e-10  # the ridge pulls towards the perturbed weights: negligible where exactness is checked


def test_step_is_registered():
    assert registry.get_step("reconstruct").config is ReconstructStep
    assert registry.get_step("reconstruct").details is ReconstructDetails


@pytest.mark.parametrize("cls, data, field", [
    (ReconstructStep, {"calib_batches": 0}, "calib_batches"),
    (ReconstructStep, {"ridge": -1.0}, "ridge"),
    (ReconstructStep, {"rows_per_batch": 0}, "rows_per_batch"),
    (ReconstructStep, {"max_condition": 1.0}, "max_condition"),
    (ReconstructStep, {"layers": [""]}, "layers"),
    (ReconstructStep, {"layers": "conv1"}, "layers"),
    (ReconstructStep, {"seed": 1.5}, "seed"),
    (ReconstructStep, {"bogus": 1}, "bogus"),
    (PruneStep, {"ratio": 0.5, "reconstruct": "yes"}, "reconstruct"),
    (DropStep, {"max_error": 0.1, "reconstruct": 1}, "reconstruct"),
    (RewriteStep, {"kind": "separable", "reconstruct": True, "calib_batches": 0}, "calib_batches"),
])
def test_bad_option_names_the_field(cls, data, field):
    with pytest.raises(ConfigError) as err:
        cls.from_dict(data, path="steps[1].step")
    assert err.value.field == f"steps[1].step.{field}"


def test_direct_construction_validates():
    with pytest.raises(ConfigError, match="ridge: expected a number >= 0"):
        ReconstructStep(ridge=-0.5)
    assert ReconstructStep(calib_batches=3, ridge=0).fit_kwargs() == {"ridge": 0, "rows_per_batch": 2048,
                                                                      "max_condition": 1e12, "seed": 0}


@pytest.fixture
def pruned(step_context):
    """A run context whose model went through a ``prune`` step (ratio 0.5, recorded), and held-out batches."""
    calib = batches(4, seed=1)
    original = calibrated(ConvNet(width=16), calib)
    ctx = step_context(copy.deepcopy(original), calib=calib, baseline=original, num_classes=5,
                       example_inputs=calib[0][0][:1])
    ctx.records.append(StepRecord("baseline", "baseline"))
    ctx.records.append(StepRecord("prune", "prune", details=prune_step(ctx, PruneStep(ratio=0.5))))
    return ctx, batches(3, seed=2)


def _perturb(model: torch.nn.Module) -> None:
    """What a fine-tune does to the weights, for weight matching: no layer is a slice of the original's any more."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.add_(0.05 * m.weight.std() * torch.randn_like(m.weight))


def test_composed_channels_are_the_original_rows_of_the_pruned_weights(pruned):
    ctx, _ = pruned
    ctx.records.append(StepRecord("prune#2", "prune", details=prune_step(ctx, PruneStep(ratio=0.75))))
    channels = recorded_channels([(r.kind, r.details) for r in ctx.records], ctx.baseline)
    first = channels["conv1"]  # conv1's inputs are the image: its weight is exactly the original's kept rows
    assert first.numel() == ctx.model.conv1.out_channels < 16
    assert torch.equal(ctx.model.conv1.weight, ctx.baseline.conv1.weight[first])
    kept = channels["conv2"]
    assert torch.equal(ctx.model.conv2.weight, ctx.baseline.conv2.weight[kept][:, first])


def test_channel_chain_ends_at_a_step_that_may_reorder(pruned):
    ctx, _ = pruned
    steps = [(r.kind, r.details) for r in ctx.records]
    every = {"conv1", "conv2", "grouped", "depthwise", "fc"}
    assert set(recorded_channels(steps, ctx.baseline)) == every
    assert torch.equal(recorded_channels(steps, ctx.baseline)["fc"], torch.arange(5))  # never pruned: own order
    assert set(recorded_channels(steps + [("finetune", None), ("calibrate", None)], ctx.baseline)) == every
    absorbed = RewriteDetails(layers=[RewriteRecord("conv2", "grouped", details={"permutes": {"permute_out":
                                                                                             "absorbed"}})])
    kept = RewriteDetails(layers=[RewriteRecord("conv2", "separable")])
    assert recorded_channels(steps + [("rewrite", absorbed)], ctx.baseline) == {}
    assert set(recorded_channels(steps + [("rewrite", kept)], ctx.baseline)) == every
    assert recorded_channels(steps + [("plan", None)], ctx.baseline) == {}


def test_after_weights_changed_pruned_layers_are_fitted_from_the_records(pruned):
    ctx, held_out = pruned
    _perturb(ctx.model)
    ctx.records.append(StepRecord("finetune", "finetune"))
    unmatched = compress.reconstruct(copy.deepcopy(ctx.model), ctx.baseline, batches(4, seed=1), verbose=False)
    assert "cannot be recovered" in {r.layer: r for r in unmatched}["conv1"].reason  # weights alone: a skip
    before = logit_error(ctx.model, ctx.baseline, held_out)
    details = reconstruct_step(ctx, ReconstructStep(calib_batches=4))
    records = {r.layer: r for r in details.reconstruction}
    assert all(r.status == "fitted" for r in records.values()), records
    # conv1 reads the image itself: its kept original rows are exactly representable (wrong channels would not be)
    assert records["conv1"].error_after < 1e-3 < records["conv1"].error_before
    assert details.top1_before_reconstruction is not None
    assert logit_error(ctx.model, ctx.baseline, held_out) < before
    json.dumps(details.to_plain(), allow_nan=False)


def test_exactly_representable_refit_reproduces_the_original(step_context):
    calib = batches(4, seed=1)
    original = calibrated(ConvNet(width=16), calib)
    model = copy.deepcopy(original)
    _perturb(model)
    ctx = step_context(model, calib=calib, baseline=original, num_classes=5)
    held_out = batches(3, seed=2)
    assert logit_error(model, original, held_out) > 0.01
    details = reconstruct_step(ctx, ReconstructStep(calib_batches=4, ridge=TINY_RIDGE))
    assert all(r.status == "fitted" for r in details.reconstruction), details.reconstruction
    assert logit_error(model, original, held_out) < EXACT


def test_prune_option_puts_the_records_into_the_prune_details(pruned, step_context):
    ctx, held_out = pruned
    plain = ctx.records[-1].details.to_plain()
    assert plain["reconstruction"] is None and plain["top1_before_reconstruction"] is None
    calib = batches(4, seed=1)
    again = step_context(copy.deepcopy(ctx.baseline), calib=calib, baseline=ctx.baseline, num_classes=5)
    details = prune_step(again, PruneStep(ratio=0.5, reconstruct=True))
    assert {r.layer for r in details.reconstruction} >= {"conv1", "conv2", "fc"}
    assert 0.0 <= details.top1_before_reconstruction <= 1.0
    plain = json.loads(json.dumps(details.to_plain(), allow_nan=False))
    assert plain["reconstruction_summary"]["fitted"] >= 2
    assert logit_error(again.model, ctx.baseline, held_out) < logit_error(ctx.model, ctx.baseline, held_out)


# --- a real run through the CLI -----------------------------------------------------------------------------

MODEL = {"name": "compress:small_resnet", "kwargs": {"num_classes": 4, "in_channels": 3, "widths": [8, 16],
                                                      "blocks": [1, 1]}}
DATA = {"source": "synthetic", "image_size": 12, "num_classes": 4, "synthetic_size": 256, "val_size": 32,
        "calib_size": 64, "batch_size": 32}


def _run(tmp: Path, name: str, steps: list) -> Path:
    from compress.run import main

    recipe = tmp / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump({"seed": 0, "model": MODEL, "data": DATA, "steps": steps,
                                      "baseline": {"train": {"epochs": 1, "lr": 0.05}}}, sort_keys=False))
    out = tmp / name
    assert main([str(recipe), "--out", str(out), "--quiet"]) == 0
    return out


@torch.no_grad()
def _held_out_logit_error(out: Path, test: torch.utils.data.DataLoader) -> float:
    from compress.transforms.rewrite.decompose import relative_error

    model, baseline = compress.load(out / "model.pt").eval(), compress.load(out / "baseline.pt").eval()
    x = torch.cat([images for images, *_ in test])
    return relative_error(model(x), baseline(x))


def test_recipe_run_reconstructs_and_reports_both_accuracies(tmp_path, isolated_cache):
    from compress.data import build_data
    from compress.recipe.schema import parse_recipe

    rebuilt = _run(tmp_path, "rebuilt", [{"prune": {"ratio": 0.5, "reconstruct": True}}, "reconstruct",
                                         {"report": {"latency": False}}])
    plain = _run(tmp_path, "plain", [{"prune": {"ratio": 0.5}}, {"report": {"latency": False}}])
    report = json.loads((rebuilt / "report.json").read_text())  # validated against the schema when written
    steps = {s["name"]: s for s in report["steps"]}
    assert [s["kind"] for s in report["steps"]] == ["baseline", "prune", "reconstruct"]
    for name in ("prune", "reconstruct"):
        assert steps[name]["details"]["reconstruction_summary"]["fitted"] >= 1
        assert steps[name]["details"]["top1_before_reconstruction"] is not None
    table = (rebuilt / "report.md").read_text()
    assert "prune (before reconstruction)" in table and "reconstruct (before reconstruction)" in table
    test = build_data(parse_recipe({"data": DATA, "steps": ["reconstruct"]}).data).test
    errors = _held_out_logit_error(rebuilt, test), _held_out_logit_error(plain, test)
    print("held-out relative logit error, reconstructed vs plain prune:", errors)
    assert errors[0] < errors[1]


def test_report_reads_the_field_by_its_name():
    import dataclasses

    from compress.reporting.schema import BEFORE_RECONSTRUCTION
    from compress.transforms.reconstruct.step import Reconstruction

    assert BEFORE_RECONSTRUCTION in {f.name for f in dataclasses.fields(Reconstruction)}
