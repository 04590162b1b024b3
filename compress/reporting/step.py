"""The ``report`` recipe step: measure latency baseline vs compressed in each runtime, write the artifacts, then
write report.json/.md/.html.

Latency rows are measured per runtime x device x dtype x batch (:func:`compress.measurement.compare_latency`
with ``runtimes``: every model a checked, BN-folded session; all sessions of one setting interleaved). A runtime
that is not installed or cannot run a setting is skipped with a note in the report, never a traceback.
"""
from __future__ import annotations

import logging

from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import MAX_BATCH, MAX_RUNS, MAX_THREADS, Config, check
from ..measurement import Comparison, compare_latency
from ..measurement.runtimes import runtime, runtimes
from ..measurement.timing import DTYPE_NAMES, MIN_RUNS
from ..recipe.registry import register_step
from ..records import StepDetails
from .build import BASELINE, COMPRESSED, build_report
from .console import summary_text
from .tables import slower_lines, verdict_lines
from .write import write_report

__all__ = ["ReportStep", "ReportDetails", "report_step", "default_runtimes", "measure_latency",
           "measure_layers"]

LOG = logging.getLogger(__name__)

_DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class ReportStep(Config):
    """Options of the ``report`` step.

    Attributes:
        latency: measure latency (baseline vs current model, interleaved in this process).
        devices: where to time; ``"cuda"`` is skipped with a note in the report when unavailable.
        batch_sizes: batch sizes to time.
        dtypes: dtypes timed on CPU (contiguous NCHW unless ``channels_last``).
        cuda_dtypes: dtypes timed on CUDA, always in channels_last (the fast layout for cuDNN).
        channels_last: use NHWC on CPU too.
        runs: timed runs per model and setting (at least 20).
        threads: CPU intra-op threads while timing (``None`` keeps ``torch.get_num_threads()``); the count
            used is recorded in every latency row.
        per_layer: time each layer in eager PyTorch (first device, first dtype, first batch size) for the
            per-layer table.
        fold_bn: time the per-layer table's models with their BatchNorms folded into the convs (the runtime
            rows always time the deploy form, BatchNorms folded, in both models); the models are not changed.
        runtimes: where to time both models (:mod:`compress.measurement.runtimes` names); ``null``: ``torch``
            and ``onnxruntime``, plus ``openvino`` when it is installed (:func:`default_runtimes`).
        artifacts: write the deploy artifacts (``model.onnx``, ``model.pt2``, ``model.safetensors``,
            ``model.json``: :mod:`compress.artifacts`) and record each one's checked error.
        plots: draw PNG plots.
    """

    latency: bool = True
    devices: tuple[str, ...] = ("cpu",)
    batch_sizes: tuple[int, ...] = (1, 64)
    dtypes: tuple[str, ...] = ("float32",)
    cuda_dtypes: tuple[str, ...] = ("float32", "bfloat16")
    channels_last: bool = False
    runs: int = 20
    threads: int | None = None
    per_layer: bool = True
    fold_bn: bool = False
    runtimes: tuple[str, ...] | None = None
    artifacts: bool = True
    plots: bool = True

    def validate(self) -> None:
        check(len(self.devices) > 0 and all(d in _DEVICES for d in self.devices), "devices",
              "a non-empty list of 'cpu' / 'cuda'", list(self.devices))
        check(len(self.batch_sizes) > 0 and all(1 <= b <= MAX_BATCH for b in self.batch_sizes), "batch_sizes",
              f"a non-empty list of integers in 1..{MAX_BATCH}", list(self.batch_sizes))
        for name in ("dtypes", "cuda_dtypes"):
            values = getattr(self, name)
            check(len(values) > 0 and all(d in DTYPE_NAMES for d in values), name,
                  f"a non-empty list of {', '.join(DTYPE_NAMES)}", list(values))
        check(MIN_RUNS <= self.runs <= MAX_RUNS, "runs", f"an integer in {MIN_RUNS}..{MAX_RUNS}", self.runs)
        check(self.threads is None or 1 <= self.threads <= MAX_THREADS, "threads",
              f"null or an integer in 1..{MAX_THREADS}", self.threads)
        known = runtimes()
        check(self.runtimes is None or (len(self.runtimes) > 0 and all(r in known for r in self.runtimes)),
              "runtimes", f"null or a non-empty list of {', '.join(known)}",
              None if self.runtimes is None else list(self.runtimes))


def default_runtimes() -> tuple[str, ...]:
    """``torch`` and ``onnxruntime``, plus ``openvino`` when it is installed (an absent ``onnxruntime`` is then
    skipped with a note, like any unavailable runtime)."""
    return ("torch", "onnxruntime") + (("openvino",) if runtime("openvino").available() is None else ())


def _settings(cfg: ReportStep, notes: list[str]) -> list[tuple[str, str, bool]]:
    """``(device, dtype, channels_last)`` combinations to time; notes why CUDA was left out."""
    out = []
    for device in cfg.devices:
        if device == "cuda" and not torch.cuda.is_available():
            notes.append("cuda not available: CUDA latency was requested but not measured")
            continue
        dtypes, layout = (cfg.cuda_dtypes, True) if device == "cuda" else (cfg.dtypes, cfg.channels_last)
        out += [(device, dtype, layout) for dtype in dtypes]
    return out


def measure_latency(ctx: Any, cfg: ReportStep, notes: list[str]) -> list[Comparison]:
    """Interleaved baseline-vs-current timings in every requested runtime, one comparison per (device, dtype,
    layout); skipped runtimes are in each comparison's timings (the report turns them into notes)."""
    if not cfg.latency:
        notes.append("latency not measured (report.latency: false)")
        return []
    models = {BASELINE: ctx.baseline, COMPRESSED: ctx.model}
    names = cfg.runtimes or default_runtimes()
    return [compare_latency(models, ctx.example_inputs, device=device, batch_sizes=cfg.batch_sizes, dtype=dtype,
                            channels_last=layout, runs=cfg.runs, runtimes=names, threads=cfg.threads,
                            verbose=ctx.verbose)
            for device, dtype, layout in _settings(cfg, notes)]


def measure_layers(ctx: Any, cfg: ReportStep) -> Comparison | None:
    """Per-layer hook times of both models in eager PyTorch at the first setting, or ``None``."""
    settings = _settings(cfg, []) if cfg.latency and cfg.per_layer else []
    if not settings:
        return None
    device, dtype, layout = settings[0]
    models = {BASELINE: ctx.baseline, COMPRESSED: ctx.model}
    return compare_latency(models, ctx.example_inputs, device=device, batch_sizes=cfg.batch_sizes[:1], dtype=dtype,
                           channels_last=layout, runs=cfg.runs, per_layer=True, fold_bn=cfg.fold_bn,
                           threads=cfg.threads, verbose=ctx.verbose)


@dataclass(frozen=True)
class ReportDetails(StepDetails):
    """What the ``report`` step wrote (the report itself is not a step record).

    Attributes:
        files: the written files (``report.json``, ``report.md``, ``report.html``, plots).
        verdicts: one line per latency comparison, slower ones said so.
    """

    files: list[str] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)


@register_step("report", ReportStep, ReportDetails)
def report_step(ctx: Any, cfg: ReportStep) -> ReportDetails:
    """Measure latency, then write report.json, report.md, report.html and plots into the run folder."""
    if not ctx.is_main:
        return ReportDetails()
    notes: list[str] = []
    comparisons = measure_latency(ctx, cfg, notes)
    layers = measure_layers(ctx, cfg)
    artifacts = ctx.write_artifacts(notes) if cfg.artifacts else {}
    report = build_report(ctx, comparisons=comparisons, layer_times=layers, artifacts=artifacts, notes=notes)
    files = write_report(report, ctx.out_dir, plots=cfg.plots, analysis=ctx.analysis)
    files += [ctx.out_dir / a["file"] for a in artifacts.values()]
    for line in slower_lines(report):
        LOG.warning(line)
    LOG.info(summary_text(report))
    return ReportDetails(files=[str(p) for p in files], verdicts=verdict_lines(report))
