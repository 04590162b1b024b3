"""The ``finetune`` and ``calibrate`` recipe steps, driven through a minimal run context."""
from __future__ import annotations

import copy

import pytest
import torch

from compress.config import parse
from compress.errors import ConfigError
from compress.training.steps import CalibrateDetails, CalibrateStep, FinetuneStep, calibrate, finetune
from tiny_training import TinyNet, loader, make_data


@pytest.fixture
def _ctx(step_context):
    def make(tmp_path, model, baseline, *, resume: bool = False):
        calib = loader(make_data(64, seed=2), shuffle=False)
        return step_context(model, baseline=baseline, calib=calib, train=loader(make_data(64)),
                            val=loader(make_data(32, seed=1), shuffle=False), example_inputs=next(iter(calib))[0][:1],
                            step_index=2, seed=5, resume=resume)

    return make


def test_finetune_step_options_parse_flat_with_distill_on_by_default():
    cfg = parse(FinetuneStep, {"epochs": 0.5, "lr": 0.02})
    assert cfg.distill is not None and cfg.distill.alpha == 0.7 and cfg.train_config().lr == 0.02
    assert parse(FinetuneStep, {"distill": None}).distill is None
    with pytest.raises(ConfigError, match=r"steps\[1\].finetune.distill.alpha"):
        parse(FinetuneStep, {"distill": {"temperature": 2}}, path="steps[1].finetune")
    with pytest.raises(ConfigError, match="max_batches"):
        parse(CalibrateStep, {"max_batches": 0})


def test_finetune_step_distills_checkpoints_and_resumes(tmp_path, _ctx):
    baseline = TinyNet(8).eval().requires_grad_(False)
    frozen = copy.deepcopy(baseline)
    init = TinyNet(4)
    ctx = _ctx(tmp_path, copy.deepcopy(init), baseline)
    details = finetune(ctx, parse(FinetuneStep, {"epochs": 1, "lr": 0.05}))
    plain = details.to_plain()
    assert details.history.steps == plain["steps"] == 2 and details.distill["alpha"] == 0.7
    assert plain["val_acc"] is not None and plain["val_acc"] == details.history.epochs[-1]["val_acc"]
    assert (tmp_path / "checkpoints" / "step2.pt").is_file()
    assert not ctx.model.conv1.weight.equal(init.conv1.weight)
    for a, b in zip(baseline.state_dict().values(), frozen.state_dict().values()):
        assert torch.equal(a, b)  # the teacher is never changed
    assert not baseline.training and not any(p.requires_grad for p in baseline.parameters())

    again = _ctx(tmp_path, copy.deepcopy(init), baseline, resume=True)
    finetune(again, parse(FinetuneStep, {"epochs": 1, "lr": 0.05}))  # finished checkpoint: loads, no training
    for a, b in zip(again.model.state_dict().values(), ctx.model.state_dict().values()):
        assert torch.equal(a, b)


def test_finetune_without_distill_needs_no_teacher(tmp_path, _ctx):
    ctx = _ctx(tmp_path, TinyNet(4), baseline=None)
    details = finetune(ctx, parse(FinetuneStep, {"steps": 3, "distill": None}))
    assert details.history.steps == 3 and details.distill is None


def test_calibrate_step_reestimates_bn(tmp_path, _ctx):
    model = TinyNet(4).eval()
    ctx = _ctx(tmp_path, model, baseline=None)
    details = calibrate(ctx, CalibrateStep(max_batches=1))
    assert details == CalibrateDetails(bn_layers=2, batches=1)
    assert model.bn1.num_batches_tracked.item() == 1 and not torch.equal(model.bn1.running_mean, torch.zeros(4))


def test_finetune_writes_its_training_curves(tmp_path, _ctx):
    import csv

    ctx = _ctx(tmp_path, TinyNet(4), baseline=None)
    details = finetune(ctx, parse(FinetuneStep, {"epochs": 2, "distill": None}))
    folder = tmp_path / details.curves
    steps = list(csv.DictReader((folder / "steps.csv").open()))
    epochs = list(csv.DictReader((folder / "epochs.csv").open()))
    assert len(steps) == details.history.steps and len(epochs) == 2
    assert [float(r["loss"]) for r in steps] == pytest.approx(details.history.step_loss)
    assert float(epochs[-1]["val_acc"]) == pytest.approx(details.history.epochs[-1]["val_acc"])
    pytest.importorskip("tensorboard")
    assert any((folder / "tensorboard").iterdir())  # an event file
