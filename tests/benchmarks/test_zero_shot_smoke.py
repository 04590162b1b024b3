"""Smoke test of benchmarks/zero_shot.py's methods on a tiny random ResNet and synthetic batches (seconds)."""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import methods  # noqa: E402
import zero_shot  # noqa: E402

from compress.models import build_model  # noqa: E402
from compress.training.calibrate import calibrate_bn  # noqa: E402
from compress.transforms.rewrite.decompose import relative_error  # noqa: E402


def test_every_method_runs_and_reconstruction_tracks_the_baseline_closer():
    spec = {"name": "compress:small_resnet", "kwargs": {"num_classes": 4, "in_channels": 1, "widths": [8, 16],
                                                        "blocks": [1, 1]}}
    gen = torch.Generator().manual_seed(0)
    calib = [(torch.randn(16, 1, 12, 12, generator=gen), torch.zeros(16, dtype=torch.long)) for _ in range(4)]
    baseline = build_model(spec)
    calibrate_bn(baseline, calib)
    baseline.eval()
    for p in baseline.parameters():
        p.requires_grad_(False)
    reference = copy.deepcopy(baseline.state_dict())
    x = torch.zeros(1, 1, 12, 12)
    pruned, _ = methods.ours_prune(baseline, x, 0.5, importance="l2")
    variants = zero_shot._variants(pruned, baseline, calib, bn_batches=4, verbose=False)
    assert tuple(variants) == zero_shot.METHODS
    assert all(torch.equal(v, reference[k]) for k, v in baseline.state_dict().items())
    held = torch.randn(32, 1, 12, 12, generator=gen)
    with torch.no_grad():
        error = {m: relative_error(model.eval()(held), baseline(held)) for m, (model, _, _) in variants.items()}
    assert error["reconstruct"] < error["none"]
    assert variants["reconstruct"][2]["fitted"] >= 1
    setup = SimpleNamespace(baseline=baseline, example=x, data=SimpleNamespace(calib=calib))
    made = {v.label: v.model for v in zero_shot.transforms(setup, targets=[0.5], separable=0.9, groups=2)}
    assert list(made) == ["torch-pruning to 0.50 MACs", "prune to 0.50 MACs", "separable, macs_target 0.90",
                          "grouped, groups 2"]
    assert all(model is not None for model in made.values())  # layer2's 16 -> 16 convs are eligible
    assert all(torch.equal(v, reference[k]) for k, v in baseline.state_dict().items())


def _tiny_setup(tmp_path):
    """A tiny trained-looking ResNet with synthetic loaders, shaped like quality.Setup."""
    from torch.utils.data import DataLoader, TensorDataset

    from compress.recipe.schema import load_recipe

    spec = {"name": "compress:small_resnet", "kwargs": {"num_classes": 4, "in_channels": 1, "widths": [8, 16],
                                                        "blocks": [1, 1]}}
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(96, 1, 12, 12, generator=gen)
    labels = (images.mean(dim=(1, 2, 3)) > 0).long() + 2 * (images[:, 0, :6].mean(dim=(1, 2)) > 0).long()
    loader = DataLoader(TensorDataset(images, labels), batch_size=16)
    baseline = build_model(spec)
    calibrate_bn(baseline, loader)
    baseline.eval()
    for p in baseline.parameters():
        p.requires_grad_(False)
    data = SimpleNamespace(calib=loader, train=loader)
    return SimpleNamespace(key="tiny", recipe=load_recipe(None, overrides=("model.kwargs.widths=[8,16]",)),
                           data=data, baseline=baseline, example=torch.zeros(1, 1, 12, 12), stage_test=loader,
                           origin={"source": "built for the test"})


def test_measure_store_and_render_one_model(tmp_path):
    from render import zero_shot_markdown

    setup = _tiny_setup(tmp_path)
    args = zero_shot._args(["--targets", "0.5", "--importances", "l2", "--no-rewrites", "--finetune-epochs", "1",
                            "--bn-batches", "2"])
    entry = zero_shot.measure(setup, args)
    assert entry["notes"] == [f"No plan rows: {zero_shot.PLAN_RECIPE} starts from another baseline (model, data or "
                              "training)."]
    transforms = [r["transform"] for r in entry["rows"]]
    assert transforms == ["torch-pruning to 0.50 MACs"] * 4 + ["prune to 0.50 MACs"] * 4
    assert [r["recovery"] for r in entry["rows"]] == list(zero_shot.METHODS) * 2
    tuned = [(r["transform"], r["recovery"]) for r in entry["rows"] if r["finetune"]]
    assert tuned == [(t, m) for t in ("torch-pruning to 0.50 MACs", "prune to 0.50 MACs")
                     for m in zero_shot.FINETUNE_RECOVERIES]
    assert all(set(r["finetune"]) == {"1"} and 0 <= r["finetune"]["1"]["top1"] <= 1 for r in entry["rows"]
               if r["finetune"])
    assert all(r["macs"] <= 0.55 for r in entry["rows"])
    path = tmp_path / "zero_shot.json"
    zero_shot.store(path, {"tiny": {**entry, "context": {"command": "c", "date": "d", "machine": {
        "cpu": "x", "cpu_count": 2, "load_avg": [0.0, 0.0, 0.0]}, "versions": {}}, "threads": 1, "seconds": 1.0}})
    doc = zero_shot.store(path, {"small_resnet": {**entry, "context": {"command": "c2", "date": "d2", "machine": {
        "cpu": "x", "cpu_count": 2, "load_avg": [0.0, 0.0, 0.0]}, "versions": {}}, "threads": 1, "seconds": 1.0}})
    assert list(doc["models"]) == ["tiny", "small_resnet"]  # a second run adds its model, keeps the first one's
    text = zero_shot_markdown(doc)
    assert text.count("| torch-pruning to 0.50 MACs | BN recal |") == 2
    assert "fine-tuned 1 epoch |" in text and "No plan rows" in text
    best = max(r["top1"] for r in entry["rows"] if r["transform"] == "prune to 0.50 MACs" and r["recovery"] != "none")
    verdict = "MET" if best >= 0.885 else "NOT MET"
    assert f"- `prune to 0.50 MACs*`: best with no gradient step {100 * best:.2f}%" in text
    assert f"against the bar of 88.50%: **{verdict}**" in text
    assert "- `latency plan of plan_cpu.yaml, batch 1` (bar 80.00%): not measured by this run" in text
