"""The report step end to end on a tiny RunContext: valid JSON, Markdown verdicts, HTML images are real PNGs."""
from __future__ import annotations

import json
import logging
import sys
import types

import matplotlib.image
import pytest
import torch
from matplotlib.figure import Figure

from compress.config import parse
from compress.errors import ConfigError
from compress.reporting import REPORT_SCHEMA, SchemaError, fmt, schema_errors, summary_text, validate
from compress.reporting.html import image_sources
from compress.reporting.step import ReportDetails, ReportStep, report_step

PNG = b"\x89PNG\r\n\x1a\n"
QUICK = {"batch_sizes": [1, 2], "runs": 20, "runtimes": ["torch"], "artifacts": False}  # runtimes: test_runtimes.py


def _files(ctx):
    out = ctx.out_dir
    report = json.loads((out / "report.json").read_text())
    return report, (out / "report.md").read_text(), (out / "report.html").read_text()


def _assert_images_are_pngs(ctx, html: str) -> list[str]:
    sources = image_sources(html)
    for src in sources:
        path = ctx.out_dir / src
        assert path.is_file(), src
        assert path.read_bytes()[:8] == PNG
        pixels = matplotlib.image.imread(path)
        assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50
    return sources


def test_report_step_writes_valid_report(tiny_ctx, caplog):
    caplog.set_level(logging.INFO, logger="compress")
    out = report_step(tiny_ctx, parse(ReportStep, QUICK))
    report, md, html = _files(tiny_ctx)
    validate(report)
    assert report["schema_version"] == "1.2"
    assert [s["name"] for s in report["steps"]] == ["baseline", "analyze", "rewrite"]
    assert report["steps"][1]["metrics"] == {}
    assert report["data"]["synthetic"] is True
    # the final model is the rewritten one: conv2 is a 4-group conv, a quarter of the dense MACs
    conv2 = next(r for r in report["layers"] if r["name"] == "conv2")
    assert conv2["macs_before"] == 16 * 16 * 9 * 8 * 8
    assert conv2["macs_after"] == 16 * 16 * 9 * 8 * 8 // 4
    assert conv2["ms_before"] > 0 and conv2["ms_after"] > 0
    assert report["final"]["macs"] < report["baseline"]["macs"]
    # one latency row per batch size, each with a verdict that also appears in report.md and the console
    assert [r["batch"] for r in report["latency"]] == [1, 2]
    assert out.verdicts and len(out.verdicts) == 2
    printed = caplog.text  # the summary is logged (the CLI shows it on stdout)
    for row, line in zip(report["latency"], out.verdicts):
        assert row["ratio"] == pytest.approx(row["baseline_ms"] / row["compressed_ms"], rel=1e-3)
        assert row["verdict"].startswith(("faster by", "SLOWER by", "no measurable difference"))
        assert line in md and line in printed
    # the rewrite table carries the errors the step's RewriteRecord measured (one key name end to end)
    emitted = report["steps"][2]["details"]["layers"][0]
    assert emitted["weight_error"] == tiny_ctx.records[2].details.layers[0].weight_error  # the typed record
    row = report["rewrites"][0]
    assert 0.0 < row["weight_error"] < 1.0 and row["weight_error"] == pytest.approx(emitted["weight_error"])
    assert row["output_error"] is not None and row["output_error"] == pytest.approx(emitted["output_error"])
    table_row = next(line for line in md.splitlines() if "| conv2 | grouped |" in line)
    assert table_row.rstrip().endswith(f"| {fmt.num(row['weight_error'])} | {fmt.num(row['output_error'])} |")
    sources = _assert_images_are_pngs(tiny_ctx, html)
    assert set(sources) == set(report["plots"]) and "plots/layer_latency.png" in sources
    assert {str(tiny_ctx.out_dir / s) for s in sources} <= set(out.files)


def test_schema_violations_are_caught(tiny_ctx):
    report_step(tiny_ctx, parse(ReportStep, {"latency": False}))
    report, _, _ = _files(tiny_ctx)
    validate(report)
    broken = json.loads(json.dumps(report))
    del broken["baseline"]
    broken["steps"][0]["metrics"]["top1"] = "high"
    broken["environment"]["threads"] = 0
    errors = schema_errors(broken, REPORT_SCHEMA)
    assert "$: missing required key 'baseline'" in errors
    assert "$.steps[0].metrics.top1: expected number or null, got str" in errors
    assert "$.environment.threads: expected >= 1, got 0" in errors
    with pytest.raises(SchemaError, match="baseline"):
        validate(broken)


def test_tolerant_without_latency_plots_or_analysis(tiny_ctx):
    out = report_step(tiny_ctx, parse(ReportStep, {"latency": False, "plots": False}))
    report, md, html = _files(tiny_ctx)
    validate(report)
    assert report["latency"] == [] and report["plots"] == [] and out.verdicts == []
    assert "latency not measured (report.latency: false)" in report["notes"]
    assert "Latency was not measured." in md and "Per-layer latency was not measured." in md
    assert image_sources(html) == []
    assert all(r["ms_before"] is None for r in report["layers"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the note written when CUDA is missing")
def test_cuda_requested_without_cuda_leaves_a_note(tiny_ctx):
    report_step(tiny_ctx, parse(ReportStep, {**QUICK, "devices": ["cpu", "cuda"], "per_layer": False}))
    report, md, _ = _files(tiny_ctx)
    assert {r["device"] for r in report["latency"]} == {"cpu"}
    assert any("cuda not available" in n for n in report["notes"]) and "cuda not available" in md


def _fake_analysis_plots(monkeypatch, fail_correlation: bool = False):
    def png(path):
        fig = Figure(figsize=(2, 2))
        fig.subplots().plot([0, 1], [1, 0])
        fig.savefig(path, format="png")

    def plot_correlation(analysis, layer, path):
        if fail_correlation:
            raise RuntimeError("no correlation for " + layer)
        png(path)

    module = types.SimpleNamespace(plot_liveness=lambda analysis, path: png(path), plot_correlation=plot_correlation)
    monkeypatch.setitem(sys.modules, "compress.analysis.plots", module)


def test_analysis_plots_are_embedded(tiny_ctx, monkeypatch):
    _fake_analysis_plots(monkeypatch)
    tiny_ctx.analysis = types.SimpleNamespace(layers={"conv1": None, "conv2": None})
    report_step(tiny_ctx, parse(ReportStep, {"latency": False}))
    report, _, html = _files(tiny_ctx)
    sources = _assert_images_are_pngs(tiny_ctx, html)
    assert {"plots/liveness.png", "plots/correlation_conv1.png", "plots/correlation_conv2.png"} <= set(sources)


def test_analysis_plot_failure_becomes_a_note(tiny_ctx, monkeypatch):
    _fake_analysis_plots(monkeypatch, fail_correlation=True)
    tiny_ctx.analysis = types.SimpleNamespace(layers=["conv1"])
    report_step(tiny_ctx, parse(ReportStep, {"latency": False}))
    report, md, html = _files(tiny_ctx)
    assert "plots/liveness.png" in image_sources(html)
    assert any("correlation_conv1.png failed: RuntimeError: no correlation for conv1" in n for n in report["notes"])
    assert "no correlation for conv1" in md


def test_missing_analysis_plot_module_becomes_a_note(tiny_ctx, monkeypatch):
    monkeypatch.setitem(sys.modules, "compress.analysis.plots", None)  # import raises ImportError
    tiny_ctx.analysis = types.SimpleNamespace(layers=["conv1"])
    report_step(tiny_ctx, parse(ReportStep, {"latency": False}))
    report, _, _ = _files(tiny_ctx)
    assert any(n.startswith("analysis plots skipped") for n in report["notes"])


def test_non_main_rank_writes_nothing(tiny_ctx):
    tiny_ctx.rank = 1
    assert report_step(tiny_ctx, parse(ReportStep, {"latency": False})) == ReportDetails()
    assert not (tiny_ctx.out_dir / "report.json").exists()


@pytest.mark.parametrize("bad,field", [({"runs": 5}, "runs"), ({"devices": ["tpu"]}, "devices"),
                                       ({"dtypes": ["int8"]}, "dtypes"), ({"batch_sizes": [0]}, "batch_sizes"),
                                       ({"devices": []}, "devices"), ({"threads": 0}, "threads"),
                                       ({"runtimes": []}, "runtimes"), ({"runtimes": ["tensorrt"]}, "runtimes")])
def test_config_rejects_bad_values(bad, field):
    with pytest.raises(ConfigError) as err:
        parse(ReportStep, bad)
    assert err.value.field == field


def test_threads_option_is_applied_recorded_and_restored(tiny_ctx):
    torch.set_num_threads(2)
    report_step(tiny_ctx, parse(ReportStep, {"batch_sizes": [1], "runs": 20, "threads": 1, "per_layer": False,
                                             "runtimes": ["torch"], "artifacts": False}))
    report, _, _ = _files(tiny_ctx)
    assert [r["threads"] for r in report["latency"]] == [1]
    assert torch.get_num_threads() == 2


def test_summary_text_mentions_every_line(tiny_ctx):
    report_step(tiny_ctx, parse(ReportStep, {"latency": False}))
    report, _, _ = _files(tiny_ctx)
    text = summary_text(report)
    assert "params" in text and "latency  not measured" in text and "synthetic data" in text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rows_fp32_and_bf16_channels_last(tiny_ctx):
    out = report_step(tiny_ctx, parse(ReportStep, {"batch_sizes": [1, 8], "devices": ["cpu", "cuda"],
                                                   "runtimes": ["torch"]}))
    report, md, html = _files(tiny_ctx)
    validate(report)
    cuda = [r for r in report["latency"] if r["device"].startswith("cuda")]
    assert {(r["dtype"], r["batch"]) for r in cuda} == {(d, b) for d in ("float32", "bfloat16") for b in (1, 8)}
    assert all(r["channels_last"] and r["compressed_ms"] > 0 for r in cuda)
    assert len(out.verdicts) == 6 and all(v in md for v in out.verdicts)
    _assert_images_are_pngs(tiny_ctx, html)


def test_training_curve_is_plotted_from_the_finetune_record(tiny_ctx):
    from compress.recipe.registry import get_step

    step = get_step("finetune")
    details = step.handler(tiny_ctx, parse(step.config, {"steps": 6, "distill": None}))
    tiny_ctx.record("finetune", details, measure=False)
    report_step(tiny_ctx, parse(ReportStep, {"latency": False, "artifacts": False}))
    report, md, html = _files(tiny_ctx)
    curve = report["steps"][-1]["details"]["curve"]
    assert curve["loss"] == pytest.approx(details.history.step_loss) and curve["step"] == list(range(1, 7))
    assert "plots/training.png" in report["plots"] and "training.png" in html

