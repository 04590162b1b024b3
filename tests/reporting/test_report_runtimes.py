"""The report per runtime: a latency row per runtime x batch, a note for an unavailable runtime, SLOWER said
loudly, and ``model.onnx`` that ONNX Runtime loads without ``compress`` and that matches the eager logits."""
from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from compress.config import parse
from compress.measurement.runtimes import openvino_runtime, runtime
from compress.reporting import validate
from compress.reporting.step import ReportStep, default_runtimes, report_step

pytestmark = pytest.mark.skipif(runtime("onnxruntime").available() is not None,
                                reason="onnxruntime not installed")

LOGITS_TOLERANCE = 1e-4  # relative max error of the ONNX file's float32 logits against eager float64


def _report(ctx) -> tuple[dict, str]:
    return json.loads((ctx.out_dir / "report.json").read_text()), (ctx.out_dir / "report.md").read_text()


@pytest.fixture
def no_openvino(monkeypatch) -> str:
    reason = "openvino not installed (made unavailable by the test)"
    monkeypatch.setattr(openvino_runtime.OpenVinoRuntime, "available", lambda self: reason)
    return reason


def test_a_row_per_runtime_and_a_note_for_an_unavailable_one(tiny_ctx, no_openvino):
    assert default_runtimes() == ("torch", "onnxruntime")  # openvino only when importable
    cfg = parse(ReportStep, {"batch_sizes": [1, 2], "runtimes": ["torch", "onnxruntime", "openvino"],
                             "per_layer": False, "artifacts": False})
    out = report_step(tiny_ctx, cfg)
    report, md = _report(tiny_ctx)
    validate(report)
    assert sorted((r["runtime"], r["batch"]) for r in report["latency"]) == [
        ("onnxruntime", 1), ("onnxruntime", 2), ("torch", 1), ("torch", 2)]
    assert report["runtimes"] == ["torch", "onnxruntime"]
    note = f"runtime openvino not measured on cpu float32: {no_openvino}"
    assert report["notes"].count(note) == 1 and note in md
    for row in report["latency"]:
        assert row["model"] == "compressed" and row["bn_folded"] and row["max_rel_error"] < 1e-3
        assert row["ratio"] == pytest.approx(row["baseline_ms"] / row["compressed_ms"], rel=1e-3)
        assert row["verdict"].startswith(("faster by", "SLOWER by", "no measurable difference"))
        assert (row["vs_torch"] is None) == (row["runtime"] == "torch")
    assert len(out.verdicts) == 4 and all(v in md for v in out.verdicts)
    assert any(v.startswith("onnxruntime cpu float32 BN-folded batch 2: ") for v in out.verdicts)


class Wide(nn.Module):
    """The tiny context's input and output, at 16x the width: slower than the baseline in every runtime."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1),
                                  nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_slower_is_said_loudly_per_runtime(tiny_ctx, caplog):
    tiny_ctx.model = Wide().eval()
    caplog.set_level(logging.WARNING, logger="compress")
    cfg = parse(ReportStep, {"batch_sizes": [8], "runtimes": ["torch", "onnxruntime"], "per_layer": False,
                             "artifacts": False, "plots": False})
    report_step(tiny_ctx, cfg)
    report, md = _report(tiny_ctx)
    for name in ("torch", "onnxruntime"):
        row = next(r for r in report["latency"] if r["runtime"] == name)
        assert row["verdict"].startswith("SLOWER by") and row["ratio"] < 1
        line = f"SLOWER in {name} cpu float32 BN-folded batch 8: the compressed model takes"
        assert f"**{line}" in md and line in caplog.text


def test_model_onnx_loads_in_onnxruntime_without_compress(tiny_ctx, tmp_path):
    cfg = parse(ReportStep, {"latency": False, "plots": False})
    out = report_step(tiny_ctx, cfg)
    report, md = _report(tiny_ctx)
    validate(report)
    path = tiny_ctx.out_dir / "model.onnx"
    assert str(path) in out.files and report["onnx"]["file"] == "model.onnx"
    assert report["onnx"]["within_tolerance"] and report["onnx"]["max_rel_error"] < 1e-3
    assert report["onnx"]["input_shape"] == ["batch", 3, 16, 16] and "ONNX export" in md
    torch.manual_seed(5)
    images = torch.randn(5, 3, 16, 16)  # a batch size the export was not traced at
    np.save(tmp_path / "images.npy", images.numpy())
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import onnxruntime as ort
        session = ort.InferenceSession({str(path)!r}, providers=["CPUExecutionProvider"])
        logits = session.run(None, {{"input": np.load({str(tmp_path / 'images.npy')!r})}})[0]
        np.save({str(tmp_path / 'logits.npy')!r}, logits)
        assert not any(m == "compress" or m.startswith("compress.") for m in sys.modules)
    """)
    subprocess.run([sys.executable, "-I", "-c", script], check=True, timeout=120)
    got = torch.from_numpy(np.load(tmp_path / "logits.npy")).double()
    reference = copy.deepcopy(tiny_ctx.model).eval().double()
    with torch.no_grad():
        want = reference(images.double())
    assert got.shape == (5, 4)
    assert float((got - want).abs().max() / want.abs().max()) < LOGITS_TOLERANCE


def test_onnx_failure_is_a_note_not_a_traceback(tiny_ctx, monkeypatch):
    from compress.artifacts import onnx_file

    def broken(model, x):
        raise RuntimeError("exporter cannot take this model\nsecond line")

    monkeypatch.setattr(onnx_file, "onnx_bytes", broken)
    report_step(tiny_ctx, parse(ReportStep, {"latency": False, "plots": False}))
    report, _ = _report(tiny_ctx)
    assert report["onnx"] is None and not (tiny_ctx.out_dir / "model.onnx").exists()
    assert ("model.onnx not written: ONNX export or its check failed (RuntimeError: exporter cannot take this "
            "model)") in report["notes"]
