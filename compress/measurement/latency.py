"""Measured wall-clock latency of a model, alone or against others in the same process.

:func:`latency` times one model; :func:`compare_latency` times several *interleaved* (one forward of each per
round, the order reversed every other round) so drift in clock speed, thermal state or background load hits
every model alike, and reports each model's speed-up over the first one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..errors import CompressError
from .layer_latency import LayerLatency, layer_latency
from .timing import (MIN_RUNS, Stats, as_dtype, cudnn_benchmark, dtype_name, make_batch, prepare, resolve_device,
                     time_call)

__all__ = ["LatencySettings", "LatencyResult", "Comparison", "latency", "compare_latency", "verdict"]


@dataclass(frozen=True)
class LatencySettings:
    """How a measurement was taken (copied into every result so a number never loses its context)."""

    device: str
    dtype: str
    channels_last: bool
    compiled: bool
    threads: int
    warmup: int
    runs: int
    bn_folded: bool = False  # BatchNorms folded into their convs (deploy form) in every compared model

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class LatencyResult:
    """Latency of one model.

    Attributes:
        settings: device, dtype, memory format, threads, warm-up and run counts.
        stats: per batch size, the :class:`~compress.measurement.timing.Stats` of ms per forward.
        samples_ms: per batch size, every timed run (ms), in order.
        layers: per-leaf-module times when ``per_layer`` was requested, else ``None``.
    """

    settings: LatencySettings
    stats: dict[int, Stats] = field(default_factory=dict)
    samples_ms: dict[int, list[float]] = field(default_factory=dict)
    layers: LayerLatency | None = None

    def median_ms(self, batch: int) -> float:
        return self.stats[batch].median_ms

    def as_dict(self) -> dict[str, Any]:
        return {"settings": self.settings.as_dict(),
                "batches": [{"batch": b, **s.as_dict()} for b, s in self.stats.items()],
                "layers": self.layers.as_dict() if self.layers is not None else None}


def _settings(device: torch.device, dtype: torch.dtype, channels_last: bool, compile: bool, warmup: int | None,
              runs: int, fold_bn: bool) -> LatencySettings:
    if runs < MIN_RUNS:
        raise CompressError(f"latency runs: expected at least {MIN_RUNS}, got {runs}")
    if warmup is None:
        # cuDNN autotuning and torch.compile need several calls before times settle
        warmup = (10 if device.type == "cuda" else 3) + (5 if compile else 0)
    if warmup < 0:
        raise CompressError(f"latency warmup: expected >= 0, got {warmup}")
    return LatencySettings(device=str(device), dtype=dtype_name(dtype), channels_last=channels_last,
                           compiled=compile, threads=torch.get_num_threads(), warmup=warmup, runs=runs,
                           bn_folded=fold_bn)


def _check_batches(batch_sizes: tuple[int, ...]) -> tuple[int, ...]:
    if not batch_sizes or any(not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise CompressError(f"latency batch_sizes: expected positive integers, got {batch_sizes!r}")
    return tuple(dict.fromkeys(batch_sizes))  # drop repeats, keep order


def compare_latency(models: dict[str, nn.Module], example_inputs: torch.Tensor, *,
                    device: torch.device | str = "cpu", batch_sizes: tuple[int, ...] = (1, 64),
                    dtype: torch.dtype | str = torch.float32, channels_last: bool = False, compile: bool = False,
                    warmup: int | None = None, runs: int = MIN_RUNS, per_layer: bool = False,
                    fold_bn: bool = False, verbose: bool = False) -> "Comparison":
    """Time several models interleaved, one forward each per round, under ``torch.inference_mode``.

    Args:
        models: name -> model; the first entry is the baseline the others are compared with. Never mutated:
            each is deep-copied, put in eval mode, moved to ``device`` and cast to ``dtype``.
        example_inputs: ``(1, C, H, W)``; its first sample is repeated to each batch size.
        device: ``"cpu"`` or ``"cuda"`` (CUDA events, ``cudnn.benchmark`` on while timing).
        batch_sizes: batch sizes to time.
        dtype: ``float32``, ``bfloat16`` or ``float16`` (the model copy and inputs are cast).
        channels_last: use NHWC memory format for the copies and inputs.
        compile: wrap each copy in ``torch.compile``.
        warmup: untimed calls per model and batch size (default 3 on CPU, 10 on CUDA, +5 when compiling).
        runs: timed rounds (at least 20).
        per_layer: also time each leaf module (at the first batch size) with :func:`layer_latency`.
        fold_bn: time every model in deploy form, its BatchNorms folded into the convs that feed them
            (:func:`compress.transforms.fold_batchnorm`, on copies; eval-mode outputs unchanged). Applied to all
            models alike, so the baseline's folded time is the reference.
        verbose: show a progress bar.

    Returns:
        A :class:`Comparison`.
    """
    if not models:
        raise CompressError("compare_latency: expected at least one model, got none")
    device, dtype = resolve_device(device), as_dtype(dtype)
    batch_sizes = _check_batches(batch_sizes)
    settings = _settings(device, dtype, channels_last, compile, warmup, runs, fold_bn)
    if fold_bn:
        from ..transforms.blocks.fold_bn import fold_batchnorm

        models = {name: fold_batchnorm(m, example_inputs=example_inputs[:1]) for name, m in models.items()}
    twins = {name: prepare(m, device=device, dtype=dtype, channels_last=channels_last, compile=compile)
             for name, m in models.items()}
    results = {name: LatencyResult(settings) for name in models}
    names = list(models)
    with cudnn_benchmark(device), torch.inference_mode():
        for batch in tqdm(batch_sizes, desc="latency", leave=False, disable=not verbose):
            x = make_batch(example_inputs, batch, device=device, dtype=dtype, channels_last=channels_last)
            for twin in twins.values():
                for _ in range(settings.warmup):
                    twin(x)
            samples: dict[str, list[float]] = {name: [] for name in names}
            for r in range(runs):
                for name in (names if r % 2 == 0 else names[::-1]):
                    samples[name].append(time_call(lambda: twins[name](x), device))
            for name in names:
                results[name].samples_ms[batch] = samples[name]
                results[name].stats[batch] = Stats.of(samples[name])
    if per_layer:
        for name, m in models.items():
            results[name].layers = layer_latency(m, example_inputs, device=device, batch=batch_sizes[0],
                                                 dtype=dtype, channels_last=channels_last, runs=runs)
    return Comparison(names=names, results=results)


def latency(model: nn.Module, example_inputs: torch.Tensor, *, device: torch.device | str = "cpu",
            batch_sizes: tuple[int, ...] = (1, 64), dtype: torch.dtype | str = torch.float32,
            channels_last: bool = False, compile: bool = False, warmup: int | None = None, runs: int = MIN_RUNS,
            per_layer: bool = False, fold_bn: bool = False, verbose: bool = False) -> LatencyResult:
    """Median and IQR of ms per forward for each batch size (see :func:`compare_latency` for the arguments)."""
    comp = compare_latency({"model": model}, example_inputs, device=device, batch_sizes=batch_sizes, dtype=dtype,
                           channels_last=channels_last, compile=compile, warmup=warmup, runs=runs,
                           per_layer=per_layer, fold_bn=fold_bn, verbose=verbose)
    return comp.results["model"]


def verdict(baseline: Stats, other: Stats, *, device: str) -> str:
    """A one-line, never-silent verdict: ``"faster by 1.83x (measured on cpu)"``, ``"SLOWER by 1.21x on cpu
    (measured)"``, or, when the two interquartile ranges overlap, ``"no measurable difference on cpu (IQRs
    overlap; median ratio 0.98x)"``: a ratio inside the run-to-run spread is not a speed-up nor a slow-down.
    """
    speedup = baseline.median_ms / other.median_ms
    if other.q1_ms <= baseline.q3_ms and baseline.q1_ms <= other.q3_ms:
        return f"no measurable difference on {device} (IQRs overlap; median ratio {speedup:.2f}x)"
    if speedup >= 1.0:
        return f"faster by {speedup:.2f}x (measured on {device})"
    return f"SLOWER by {1.0 / speedup:.2f}x on {device} (measured)"


@dataclass
class Comparison:
    """Interleaved latencies of several models; ``names[0]`` is the baseline."""

    names: list[str]
    results: dict[str, LatencyResult]

    @property
    def settings(self) -> LatencySettings:
        return self.results[self.names[0]].settings

    def speedup(self, name: str, batch: int) -> float:
        """``baseline median / name median``: above 1 means ``name`` is faster."""
        return self.results[self.names[0]].median_ms(batch) / self.results[name].median_ms(batch)

    def rows(self) -> list[dict[str, Any]]:
        """One row per (other model, batch size): the report's ``latency`` entries."""
        base, s = self.results[self.names[0]], self.settings
        rows = []
        for name in self.names[1:]:
            for batch, stats in self.results[name].stats.items():
                b = base.stats[batch]
                rows.append({"model": name, "device": s.device, "dtype": s.dtype, "batch": batch,
                             "channels_last": s.channels_last, "compiled": s.compiled, "bn_folded": s.bn_folded,
                             "threads": s.threads,
                             "runs": s.runs, "baseline_ms": round(b.median_ms, 6),
                             "compressed_ms": round(stats.median_ms, 6), "baseline_iqr_ms": round(b.iqr_ms, 6),
                             "compressed_iqr_ms": round(stats.iqr_ms, 6),
                             "ratio": round(self.speedup(name, batch), 6),
                             "verdict": verdict(b, stats, device=s.device)})
        return rows
