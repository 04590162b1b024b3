"""benchmarks/runtimes.py: the default recipe's models (full and pruned) and the Markdown table, on tiny runs."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import runtimes as bench  # noqa: E402

from compress.measurement import compare_latency, cost  # noqa: E402
from compress.measurement.runtimes import runtime  # noqa: E402


def test_models_follow_the_default_recipe_and_the_table_shows_every_row(monkeypatch):
    models, x, facts = bench.default_models(size=12, seed=0, round_to=(8,))
    assert list(models) == ["full", "pruned", "pruned-r8"] and x.shape == (1, 1, 12, 12)
    macs = {name: cost(m, x).macs for name, m in models.items()}
    assert macs["pruned"] <= facts["macs_target"] * macs["full"]
    assert all(w % 8 == 0 for w in facts["block_widths"]["pruned-r8"])
    assert not any(m.training for m in models.values())
    monkeypatch.setattr(runtime("openvino"), "available", lambda: "openvino not installed")
    comp = compare_latency(models, x, runtimes=("torch", "openvino"), batch_sizes=(2,), runs=20, warmup=0, threads=1)
    lines = bench.table(comp, macs).splitlines()
    assert lines[0].startswith("| runtime | version | batch | model | MMACs |")
    assert len(lines) == 2 + 3 + 1  # header, rule, one row per model in torch, one for the skipped runtime
    assert "| baseline |" in lines[2] and "not measured: openvino not installed" in lines[-1]
    assert f"| {macs['pruned'] / 1e6:.2f} |" in lines[3]
    assert torch.get_num_threads() == 1
