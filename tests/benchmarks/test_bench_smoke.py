"""Smoke test of the benchmark plumbing on tiny random models and synthetic data (no Fashion-MNIST, < 30 s).

Checks that each compared method meets its MACs budget without touching the baseline, that one quality row
runs end to end (transform, calibration, fine-tune, latency), that the coverage helpers pick and rewrite
layers, that a hung child is killed, and that RESULTS.md sections state losses and failures plainly.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import coverage  # noqa: E402
import methods  # noqa: E402
import quality  # noqa: E402
import render  # noqa: E402

from compress.data import DataConfig, build_data  # noqa: E402
from compress.models import build_model  # noqa: E402


def _tiny(num_classes: int = 4, channels: int = 3) -> torch.nn.Module:
    spec = {"name": "compress:small_resnet",
            "kwargs": {"num_classes": num_classes, "in_channels": channels, "widths": [16, 16], "blocks": [1, 1]}}
    return build_model(spec).eval()


@pytest.mark.parametrize("method", ["tp", "prune", "separable", "grouped"])
def test_methods_meet_budget_and_leave_baseline_alone(method):
    model, x = _tiny(), torch.randn(1, 3, 12, 12)
    reference = copy.deepcopy(model.state_dict())
    base = methods.macs_of(model, x)
    if method == "tp":
        twin, info = methods.tp_magnitude(model, x, 0.5)
    elif method == "prune":
        twin, info = methods.ours_prune(model, x, 0.5, importance="l2")
    else:
        twin, info = methods.ours_rewrite(model, x, 0.5, kind=method)
        assert info["budget_met"] and info["rewritten"] >= 1
    assert methods.macs_of(twin, x) <= 0.5 * base
    assert twin(x).shape == (1, 4)
    for name, tensor in model.state_dict().items():  # the baseline is deep-copied, never changed
        assert torch.equal(tensor, reference[name]), name


def test_quality_row_end_to_end_on_synthetic_data():
    data = build_data(DataConfig(source="synthetic", image_size=12, num_classes=4, synthetic_size=96, val_size=16,
                                 calib_size=32, batch_size=16, eval_batch_size=64), seed=0)
    baseline = _tiny()
    for p in baseline.parameters():
        p.requires_grad_(False)
    setup = quality.Setup("small_resnet", None, data, baseline, torch.zeros(1, 3, 12, 12), {})
    args = argparse.Namespace(epochs=1.0, lr=0.01, seed=0, runs=20, threads=1)
    loader = quality.finetune_loader(data, 32, seed=0)
    assert len(loader.dataset) == 32
    variants = {}
    for method in ("tp", "prune", "rewrite"):
        model, row = quality._run_method(setup, method, 0.5, loader, args, importance="l2", analysis=None)
        assert 0.0 <= row["top1_finetuned"] <= 1.0 and row["macs"] < 0.55 * methods.macs_of(baseline, setup.example)
        assert ("top1_calibrated" in row) == (method != "tp") and row["distill"] == (method != "tp")
        variants[f"{method}@0.5"] = model
    lat = quality._latency(setup, variants, args)
    assert lat["settings"]["threads"] == 1 and lat["models"]["baseline"]["1"]["speedup"] == 1.0
    assert set(lat["models"]) == {"baseline", *variants}


def test_coverage_helpers_pick_smallest_and_check_forward():
    model, x = _tiny(num_classes=10), torch.randn(2, 3, 12, 12)
    names = coverage._eligible(model, "separable")
    assert names and all(model.get_submodule(n).kernel_size == (3, 3) for n in names)
    batches = coverage._batches(model, names, 1)
    assert batches[0] == [min(names, key=lambda n: model.get_submodule(n).weight.numel())]
    assert len(batches) == min(len(names), coverage.TRIES) and coverage._batches(model, names, None) == [None]
    row = coverage._rewrite(model, x, "separable", None, 1)
    assert row["rewritten"] == 1 and row["layers"] == 1
    assert coverage._rewrite(model, x, "dilated", None, None) == {"rewritten": 0, "declined": []}  # n/a: no K >= 5


def test_run_isolated_kills_a_hung_child_and_reads_json():
    hung = common.run_isolated(["-c", "print('{\"partial\": 1}', flush=True); import time; time.sleep(30)"],
                               timeout=3)
    assert hung.status == "timeout" and hung.data == {"partial": 1} and hung.seconds < 20
    done = common.run_isolated(["-c", "print('noise'); print('{\"a\": 2}')"], timeout=20)
    assert done.status == "ok" and done.data == {"a": 2}


def test_rendered_sections_say_slower_and_failures():
    title, rows = render.parse_latency_table((BENCH / "results" / "gpu" / "gpu_latency.md").read_text())
    sep = next(r for r in rows if r["model"] == "resnet18" and r["variant"].startswith("compress-separable"))
    assert "H200" in title and sep["speedup"] < 1
    text = render.efficiency_section([], None, BENCH / "results" / "gpu" / "gpu_latency.md")
    assert "SLOWER by 3.85x" in text and f"{sep['speedup'] / sep['mac_reduction']:.2f}" in text
    cov = {**common.context("x"), "quick": True, "ratio": 0.3, "kinds": coverage.KINDS, "timeout_s": 1,
           "memory_gib": 24, "layers_per_kind": 2, "seconds": 1.0,
           "rows": [{"name": "m", "input": 64, "analyze": {"status": "ok"},
                     "prune": {"status": "error", "error": "Boom: bad"}, "seconds": 1.0},
                    {"name": "huge", "status": "skipped: needs ~99 GiB > 24 GiB"}]}
    text = render.coverage_section(cov, None, rerun=False)
    assert "m / prune: Boom: bad" in text and "0/1 models passed" in text and "huge" in text
    assert "Full sweep" not in text
    full = {**cov, "quick": False, "partial": "timm: 3 of 9 models"}
    text = render.coverage_section(cov, None, rerun=False, full=full)
    assert text.index("### Full sweep") < text.index("### The quick sweep") < text.index("m / prune: Boom: bad")
    assert "sweep state: timm: 3 of 9 models" in text and "\n".join(coverage.totals(full)) in text


def test_coverage_totals_from_a_real_row():
    """totals() on a row that check_model measured (squeezenet at 64 px) plus a failed and a skipped one."""
    row = coverage.check_model("squeezenet1_1", 64, limit=1)
    failed = {"name": "broken", "input": 64, "analyze": {"status": "ok"},
              "prune": {"status": "error", "error": "CompressError: at module 'x'"}, "tp_alone": {"status": "ok"}}
    out = {"kinds": coverage.KINDS, "rows": [row, failed, {"name": "huge", "status": "skipped: needs ~99 GiB"}]}
    lines = "\n".join(coverage.totals(out))
    assert "models: 3; ran 2; skipped for memory 1 (huge)" in lines
    assert "- analyze: 2/2 passed" in lines and "- prune: 1/2 passed; failed: broken" in lines
    fraction = row["prune"]["macs_after"] / row["prune"]["macs_before"]
    assert fraction <= coverage.MAX_MACS and f"reaches <= {coverage.MAX_MACS} of the MACs: 1/2" in lines
    assert "n/a" in coverage.markdown({**common.context("x"), "ratio": 0.3, "timeout_s": 1, **out, "seconds": 1})
    stages = [s for s in ("analyze", "prune", "onnx", *coverage.KINDS) if isinstance(row.get(s), dict)]
    name, slowest = max(((s, row[s]["seconds"]) for s in stages), key=lambda item: item[1])
    assert f"slowest compress stage: {slowest:.0f} s (squeezenet1_1, {name}); over 120 s: none" in lines

    # the same row as a model that kept most of its MACs, two groups skipped, and a prune over the stage limit
    held = copy.deepcopy(row)
    held["name"] = "held"
    held["prune"].update(macs_after=int(0.9 * held["prune"]["macs_before"]), skipped_groups=2, seconds=130.0,
                         skipped=["features.3: the pruned model fails: RuntimeError: split_with_sizes"])
    lines = "\n".join(coverage.totals({**out, "rows": [row, held]}))
    assert "  - held (0.90): 2 groups left unpruned, the first features.3: the pruned model fails" in lines
    assert "(held, prune); over 120 s: held prune (130 s)" in lines


def test_coverage_models_have_no_all_zero_layer():
    """torchvision zero-initialises the ViT head: its outputs would be constant and the ONNX numerics check
    vacuous, so the coverage builder gives such layers small random weights (and leaves the others alone)."""
    from torchvision.models.vision_transformer import VisionTransformer

    model = VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=10).eval()
    assert not model.heads.head.weight.any()
    proj = model.conv_proj.weight.clone()
    coverage._no_zero_layers(model)
    assert model.heads.head.weight.any() and torch.equal(model.conv_proj.weight, proj)
    out = model(torch.randn(2, 3, 32, 32))
    assert float((out[0] - out[1]).abs().max()) > 0  # no longer the same output for every input


def test_coverage_input_size_keeps_64px_for_a_timm_model_that_runs_at_64px():
    """The shape check builds the model on the meta device: building must not read weights there (the zero-layer
    fix once did, and every timm model fell back to its pretrained 224-288 px)."""
    pytest.importorskip("timm")
    with torch.device("meta"):
        model = coverage.build("timm:resnet18")
    assert model.fc.weight.is_meta
    assert coverage.input_size("timm:resnet18") == 64
    assert coverage.input_size("timm:bat_resnext26ts") == 256  # asserts its feature-map size: its own 256 px


def test_coverage_rerun_rows_merge_into_an_earlier_sweep(tmp_path):
    """A rerun of some models replaces exactly their rows in the earlier sweep, appends new ones, and the sweep's
    command names the rerun; its coverage.md is rewritten from the merged rows."""
    import json

    row = coverage.check_model("squeezenet1_1", 64, limit=1)
    old_failed = {"name": "squeezenet1_1", "input": 64, "analyze": {"status": "ok"},
                  "prune": {"status": "error", "error": "CompressError: old failure"}}
    other = {"name": "kept", "input": 64, "analyze": {"status": "ok"}, "prune": {"status": "error", "error": "E"}}
    base = {**common.context("python benchmarks/coverage.py --models squeezenet1_1 kept"), "ratio": 0.3,
            "kinds": coverage.KINDS, "timeout_s": 1, "seconds": 1, "rows": [old_failed, other]}
    path = tmp_path / "coverage.json"
    path.write_text(json.dumps(base))
    rerun = {**common.context("python benchmarks/coverage.py --models squeezenet1_1 new"), "rows": [
        row, {"name": "new", "status": "skipped: needs ~99 GiB"}]}
    merged = coverage.merge_rows(path, rerun)
    assert [r["name"] for r in merged["rows"]] == ["squeezenet1_1", "kept", "new"]
    assert merged["rows"][0] is not old_failed and merged["rows"][0]["prune"]["status"] == "ok"
    assert merged["command"].endswith(f"; rows rerun {rerun['date']}: {rerun['command']}")
    assert json.loads(path.read_text()) == merged
    text = (tmp_path / "coverage.md").read_text()
    assert "old failure" not in text and "- prune: 1/2 passed; failed: kept" in text
