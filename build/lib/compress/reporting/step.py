"""The ``report`` recipe step: measure latency baseline vs compressed, then write report.json/.md/.html."""
from __future__ import annotations

import logging

from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import MAX_BATCH, MAX_RUNS, MAX_THREADS, Config, check
from ..measurement import Comparison, compare_latency
from ..measurement.timing import DTYPE_NAMES, MIN_RUNS, num_threads
from ..recipe.registry import register_step
from ..records import StepDetails
from .build import BASELINE, COMPRESSED, build_report
from .console import summary_text
from .tables import verdict_lines
from .write import write_report

__all__ = ["ReportStep", "report_step"]

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
        per_layer: time each layer (first device, first dtype, first batch size) for the per-layer table.
        fold_bn: time both models with their BatchNorms folded into the convs (the deploy form; what a
            ``plan`` step with ``fold_bn: true`` planned for); the models themselves are not changed.
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
    plots: bool = True

    def validate(self) -> None:
        check(len(self.devices) > 0 and all(d in _DEVICES for d in self.devices), "devices",
              "a non-empty list of 'cpu' / 'cuda'", list(self.devices))
        check(len(self.batch_sizes) > 0 and all(1 <= b <= MAX_BATCH for b in self.batch_sizes), "batch_sizes",
              f"a non-empty list of integers in 1..{MAX_BATCH}", list(self.batch_sizes))
        for field in ("dtypes", "cuda_dtypes"):
            values = getattr(self, field)
            check(len(values) > 0 and all(d in DTYPE_NAMES for d in values), field,
                  f"a non-empty list of {', '.join(DTYPE_NAMES)}", list(values))
        check(MIN_RUNS <= self.runs <= MAX_RUNS, "runs", f"an integer in {MIN_RUNS}..{MAX_RUNS}", self.runs)
        check(self.threads is None or 1 <= self.threads <= MAX_THREADS, "threads",
              f"null or an integer in 1..{MAX_THREADS}", self.threads)


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
    """Interleaved baseline-vs-current timings for every requested setting."""
    if not cfg.latency:
        notes.append("latency not measured (report.latency: false)")
        return []
    models = {BASELINE: ctx.baseline, COMPRESSED: ctx.model}
    with num_threads(cfg.threads):
        return [compare_latency(models, ctx.example_inputs, device=device, batch_sizes=cfg.batch_sizes, dtype=dtype,
                                channels_last=layout, runs=cfg.runs, per_layer=cfg.per_layer and i == 0, fold_bn=cfg.fold_bn,
                                verbose=ctx.verbose)
                for i, (device, dtype, layout) in enumerate(_settings(cfg, notes))]


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
    report = build_report(ctx, comparisons=comparisons, notes=notes)
    files = write_report(report, ctx.out_dir, plots=cfg.plots, analysis=ctx.analysis)
    LOG.info(summary_text(report))
    return ReportDetails(files=[str(p) for p in files], verdicts=verdict_lines(report))
