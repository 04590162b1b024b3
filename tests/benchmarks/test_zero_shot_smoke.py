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
    made = dict(zero_shot.transforms(setup, targets=[0.5], separable=0.9, groups=2))
    assert list(made) == ["prune to 0.50 MACs", "separable, macs_target 0.90", "grouped, groups 2"]
    assert all(model is not None for model in made.values())  # layer2's 16 -> 16 convs are eligible
    assert all(torch.equal(v, reference[k]) for k, v in baseline.state_dict().items())
