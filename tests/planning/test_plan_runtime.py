"""Planning for a runtime: the latency table times candidates as sessions of that runtime, keyed by its name and
version, and the closed loop measures whole models in it."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from compress.measurement import cost
from compress.measurement.runtimes import onnx_runtime, runtime
from compress.planning import PlanOptions, apply_plan, plan
from compress.planning.table import Conditions, build_table, default_requests, runtime_calls
from compress.planning.shapes import capture_shapes

from planning_helpers import tiny_net

pytestmark = pytest.mark.skipif(runtime("onnxruntime").available() is not None,
                                reason="onnxruntime not installed")

TOLERANCE = 1e-4  # relative max error of an ONNX Runtime float32 conv against eager


@pytest.fixture
def builds(monkeypatch) -> list[int]:
    """Counts ONNX Runtime sessions built (each table entry timed in onnxruntime is one)."""
    calls: list[int] = []
    original = onnx_runtime.OnnxRuntime.build

    def counting(self, model, x, **kwargs):
        calls.append(x.shape[0])
        return original(self, model, x, **kwargs)

    monkeypatch.setattr(onnx_runtime.OnnxRuntime, "build", counting)
    return calls


def test_runtime_calls_run_the_same_conv(net, x):
    convs = {"a": (copy.deepcopy(net[0]).eval(), torch.randn(4, 3, 16, 16))}
    assert runtime_calls(convs, runtime="torch", device=torch.device("cpu"), dtype=torch.float32,
                         channels_last=False)["a"][0] is convs["a"][0]  # torch: the module itself
    call, native = runtime_calls(convs, runtime="onnxruntime", device=torch.device("cpu"), dtype=torch.float32,
                                 channels_last=False)["a"]
    got = torch.from_numpy(call(native)[0])
    reference = copy.deepcopy(net[0]).eval()
    with torch.no_grad():
        want = reference(convs["a"][1])
    assert float((got - want).abs().max() / want.abs().max()) < TOLERANCE


def test_table_key_and_cache_file_per_runtime(net, x, tmp_path, builds):
    requests = default_requests(capture_shapes(net, x), align=8, kinds=("prune",))
    tables = {name: build_table(requests, Conditions(batch=4, runtime=name), cache_dir=tmp_path, runs=2, warmup=1,
                                verbose=False) for name in ("torch", "onnxruntime")}
    files = sorted(tmp_path.glob("*.json"))
    assert len(files) == 2 and {t.path for t in tables.values()} == set(files)
    entries = sum(len(r.entries()) for r in requests.values())
    assert len(builds) == entries  # every onnxruntime entry is its own session, none for torch
    for name, table in tables.items():
        key = json.loads(table.path.read_text())["key"]
        assert key["runtime"] == name and key["runtime_version"] == runtime(name).version()
        assert key["runtime_revision"] == runtime(name).revision  # tables of older session settings are not reused
        assert table.path.name.startswith(name) and table.measured == entries
    again = build_table(requests, Conditions(batch=4, runtime="onnxruntime"), cache_dir=tmp_path, runs=2, warmup=1,
                        verbose=False)
    assert again.reused == entries and again.measured == 0 and len(builds) == entries  # the cache is reused


def test_onnxruntime_plan_meets_a_macs_target_and_measures_in_onnxruntime(net, x, tmp_path):
    p = plan(net, x, PlanOptions(target={"macs": 0.7}, runtime="onnxruntime", batch=4, forms=("prune",),
                                 cache_dir=str(tmp_path)), verbose=False)
    assert p.met and p.runtime == "onnxruntime" and p.choices
    planned = apply_plan(copy.deepcopy(net), p, x)
    assert cost(planned, x).macs / cost(net, x).macs == pytest.approx(p.macs_ratio) and p.macs_ratio <= 0.72
    row = p.latency  # the final model's latency, measured in the plan's runtime
    assert row["runtime"] == "onnxruntime" and row["model"] == "planned" and row["bn_folded"]
    assert row["max_rel_error"] < 1e-3 and row["batch"] == 4


def test_onnxruntime_latency_plan_times_its_table_in_onnxruntime(net, x, tmp_path, builds):
    p = plan(net, x, PlanOptions(target={"latency": 0.8}, runtime="onnxruntime", batch=4, forms=("prune",),
                                 max_iters=1, table_runs=2, cache_dir=str(tmp_path)), verbose=False)
    assert p.table["runtime"] == "onnxruntime" and p.table["measured"] > 0
    assert Path(p.table["path"]).name.startswith("onnxruntime")
    assert len(builds) >= p.table["measured"]  # table entries, plus whole models in the closed loop
    assert p.notes[0].startswith("latency of BN-folded models (deploy form) in runtime onnxruntime")
    assert len(p.iterations) == 1
    if p.choices:  # a plan measured slower than the original is emptied: nothing is then timed for it
        assert p.latency["runtime"] == "onnxruntime"
        assert p.measured_ratio == pytest.approx(p.latency["compressed_ms"] / p.latency["baseline_ms"])
        assert all(c.width_to % 8 == 0 for c in p.choices if c.form == "prune")
    assert ("met" if p.met else "NOT MET") in p.verdict
