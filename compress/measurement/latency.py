"""Measured wall-clock latency of a model, alone or against others in the same process.

:func:`latency` times one model; :func:`compare_latency` times several *interleaved* (one forward of each per
round, the order reversed every other round) so drift in clock speed, thermal state or background load hits
every model alike, and reports each model's speed-up over the first one. Given ``runtimes``, it times every
model in each runtime (:mod:`compress.measurement.runtimes`: eager PyTorch, torch.compile, ONNX Runtime,
OpenVINO), one :class:`RuntimeTiming` per (runtime, device, dtype, batch): one runtime after another, its
sessions of every model interleaved in the same rounds. Runtimes are not interleaved with each other: after a
call, a runtime's thread pool spin-waits (torch's OpenMP threads, OpenVINO's TBB workers), so the next runtime's
call would find its cores taken (measured: a 0.044 ms ONNX Runtime model timed at 0.062-0.074 ms when eager
PyTorch or OpenVINO calls came between its calls). The speed-up, a ratio within one runtime, stays interleaved;
the "vs eager torch" ratio compares blocks timed one after the other.
"""
from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, NamedTuple, TypeVar

import torch
from torch import nn
from tqdm import tqdm

from ..config import MAX_THREADS, options_from
from ..errors import CompressError
from .layer_latency import LayerLatency, layer_latency
from .timing import (MIN_RUNS, Stats, as_dtype, cudnn_benchmark, dtype_name, make_batch, num_threads, prepare,
                     resolve_device, time_call)

__all__ = ["BURST_MS", "TimingOptions", "LatencySettings", "LatencyResult", "RuntimeKey", "RuntimeTiming", "Comparison",
           "latency", "compare_latency", "verdict"]

LOG = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)

# Pause before each runtime's rounds: the thread pools of the runtime timed before (torch's OpenMP threads,
# OpenVINO's TBB workers) spin-wait for a while after their last call, taking the cores from the next one.
QUIET_S = 0.2
# A call shorter than this is sampled as the mean of a burst of consecutive calls (see _interleave).
BURST_MS = 2.0
MAX_BURST = 32


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
    burst_ms: float = BURST_MS  # every sample warm (after an untimed call); shorter calls: mean of a burst

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
    """The settings record (``runs`` / ``warmup`` already validated by :class:`TimingOptions`)."""
    if warmup is None:
        # cuDNN autotuning and torch.compile need several calls before times settle
        warmup = (10 if device.type == "cuda" else 3) + (5 if compile else 0)
    return LatencySettings(device=str(device), dtype=dtype_name(dtype), channels_last=channels_last,
                           compiled=compile, threads=torch.get_num_threads(), warmup=warmup, runs=runs,
                           bn_folded=fold_bn)


def _check_batches(batch_sizes: tuple[int, ...]) -> tuple[int, ...]:
    if not batch_sizes or any(not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise CompressError(f"latency batch_sizes: expected positive integers, got {batch_sizes!r}")
    return tuple(dict.fromkeys(batch_sizes))  # drop repeats, keep order


def _check_threads(threads: int | None) -> None:
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)
                                or not 1 <= threads <= MAX_THREADS):
        raise CompressError(f"latency threads: expected an integer in 1..{MAX_THREADS} or None, got {threads!r}")


def _repeats(call: Callable[[], object], device: torch.device) -> int:
    """Consecutive calls one sample of ``call`` averages: 1 for calls of at least :data:`BURST_MS`, else as many
    as fill about :data:`BURST_MS` (at most :data:`MAX_BURST`)."""
    ms = min(time_call(call, device) for _ in range(2))
    return 1 if ms >= BURST_MS else min(MAX_BURST, max(2, math.ceil(BURST_MS / max(ms, 1e-6))))


def _interleave(calls: dict[K, Callable[[], object]], *, device: torch.device, warmup: int,
                runs: int) -> dict[K, list[float]]:
    """``warmup`` untimed calls of each, then ``runs`` rounds timing each once (ms), the order reversed every
    other round.

    Every sample is warm: in each round a model gets one untimed call, then a timed burst of consecutive calls
    whose mean is the sample (one call, or for calls shorter than :data:`BURST_MS` as many as fill it:
    :func:`_repeats`). Otherwise the previous model's (or runtime's) weights and buffers would have evicted its
    working set from the CPU caches in every round, a cost a deployed model serving requests does not pay (a
    0.05 ms ONNX Runtime model measured 0.10 ms; MobileNetV2 at 224 px 2.2 ms instead of 1.8 ms).
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    order = list(calls)
    repeats = {key: _repeats(calls[key], device) for key in order}
    samples: dict[K, list[float]] = {key: [] for key in order}
    for r in range(runs):
        for key in (order if r % 2 == 0 else order[::-1]):
            call, n = calls[key], repeats[key]
            call()
            samples[key].append(time_call(call, device) if n == 1 else
                                time_call(lambda: [call() for _ in range(n)], device) / n)
    return samples


@dataclass(frozen=True)
class TimingOptions:
    """How :func:`compare_latency` / :func:`latency` measure: one validated config (built directly, or from the
    keyword shorthand those functions accept).

    Attributes:
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
        runtimes: names of :mod:`compress.measurement.runtimes` to time every model in, e.g.
            ``("torch", "onnxruntime")``: each model becomes a checked session per runtime (BN-folded, output
            compared with eager), each runtime's sessions are timed interleaved per batch size (runtime after
            runtime), and the result's :attr:`Comparison.timings` holds one :class:`RuntimeTiming` per (runtime,
            device, dtype, batch). A runtime that is unavailable here, cannot run on ``device`` in ``dtype`` or
            fails its check is skipped, its reason recorded (and logged). ``None`` (default): eager PyTorch only, as
            :attr:`Comparison.results`. With runtimes, ``fold_bn`` is implied, and ``compile`` and ``per_layer``
            are refused (use the ``"torch-compile"`` runtime; time layers without runtimes).
        threads: CPU threads while timing (torch's intra-op threads, and each runtime's own setting); ``None``:
            ``torch.get_num_threads()``. Recorded in the settings and in every row.

    Raises:
        CompressError: a value out of range (``latency batch_sizes: expected ...``).
    """

    device: torch.device | str = "cpu"
    batch_sizes: tuple[int, ...] = (1, 64)
    dtype: torch.dtype | str = torch.float32
    channels_last: bool = False
    compile: bool = False
    warmup: int | None = None
    runs: int = MIN_RUNS
    per_layer: bool = False
    fold_bn: bool = False
    runtimes: tuple[str, ...] | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch_sizes", _check_batches(tuple(self.batch_sizes)))
        if self.runtimes is not None:
            object.__setattr__(self, "runtimes", tuple(self.runtimes))
        _check_threads(self.threads)
        if self.runs < MIN_RUNS:
            raise CompressError(f"latency runs: expected at least {MIN_RUNS}, got {self.runs}")
        if self.warmup is not None and self.warmup < 0:
            raise CompressError(f"latency warmup: expected >= 0, got {self.warmup}")


def compare_latency(models: dict[str, nn.Module], example_inputs: torch.Tensor,
                    options: TimingOptions | None = None, *, verbose: bool = False, **shorthand: Any) -> "Comparison":
    """Time several models interleaved, one forward each per round, under ``torch.inference_mode``.

    Args:
        models: name -> model; the first entry is the baseline the others are compared with. Never mutated:
            each is deep-copied, put in eval mode, moved to ``device`` and cast to ``dtype``.
        example_inputs: ``(1, C, H, W)``; its first sample is repeated to each batch size.
        options: how to measure (:class:`TimingOptions`); or give its fields as keyword ``shorthand``
            (``device="cuda", batch_sizes=(1,), runtimes=("torch", "onnxruntime")``).
        verbose: show a progress bar.

    Returns:
        A :class:`Comparison`.

    Raises:
        CompressError: bad options, an unknown runtime name.
    """
    if not models:
        raise CompressError("compare_latency: expected at least one model, got none")
    o = options_from(TimingOptions, options, shorthand, who="latency")
    with num_threads(o.threads):
        if o.runtimes is not None:
            return _compare_runtimes(models, example_inputs, o.runtimes, device=o.device, batch_sizes=o.batch_sizes,
                                     dtype=o.dtype, channels_last=o.channels_last, compile=o.compile,
                                     warmup=o.warmup, runs=o.runs, per_layer=o.per_layer, verbose=verbose)
        return _compare_eager(models, example_inputs, device=o.device, batch_sizes=o.batch_sizes, dtype=o.dtype,
                              channels_last=o.channels_last, compile=o.compile, warmup=o.warmup, runs=o.runs,
                              per_layer=o.per_layer, fold_bn=o.fold_bn, verbose=verbose)


def _compare_eager(models: dict[str, nn.Module], example_inputs: torch.Tensor, *, device: torch.device | str,
                   batch_sizes: tuple[int, ...], dtype: torch.dtype | str, channels_last: bool, compile: bool,
                   warmup: int | None, runs: int, per_layer: bool, fold_bn: bool, verbose: bool) -> "Comparison":
    """:func:`compare_latency` without runtimes: eager (or ``torch.compile``-d) copies of the models."""
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
            samples = _interleave({name: functools.partial(twins[name], x) for name in names}, device=device,
                                  warmup=settings.warmup, runs=runs)
            for name in names:
                results[name].samples_ms[batch] = samples[name]
                results[name].stats[batch] = Stats.of(samples[name])
    if per_layer:
        for name, m in models.items():
            results[name].layers = layer_latency(m, example_inputs, device=device, batch=batch_sizes[0],
                                                 dtype=dtype, channels_last=channels_last, runs=runs)
    return Comparison(names=names, results=results)


def _compare_runtimes(models: dict[str, nn.Module], example_inputs: torch.Tensor, names: tuple[str, ...], *,
                      device: torch.device | str, batch_sizes: tuple[int, ...], dtype: torch.dtype | str,
                      channels_last: bool, compile: bool, warmup: int | None, runs: int, per_layer: bool,
                      verbose: bool) -> "Comparison":
    """:func:`compare_latency` with ``runtimes``: every model's session in every runtime; per runtime, interleaved."""
    from .runtimes import runtime  # deferred: the runtimes import this package's timing helpers

    if compile or per_layer:
        raise CompressError("compare_latency: with runtimes, compile and per_layer are not available (time "
                            "the 'torch-compile' runtime; measure per-layer times without runtimes)")
    if not names:
        raise CompressError("compare_latency runtimes: expected at least one runtime name, got none")
    chosen = [runtime(name) for name in dict.fromkeys(names)]  # an unknown name is the user's error: raise
    device, dtype = resolve_device(device), as_dtype(dtype)
    batch_sizes = _check_batches(batch_sizes)
    settings = _settings(device, dtype, channels_last, "torch-compile" in names, warmup, runs, True)
    sessions, skipped = {}, {}
    for rt in tqdm(chosen, desc="sessions", leave=False, disable=not verbose):
        reason = rt.unsupported(device=device, dtype=dtype)
        try:
            built = {} if reason else {name: rt.session(m, example_inputs, device=device, dtype=dtype,
                                                        threads=settings.threads, batch=batch_sizes[0],
                                                        channels_last=channels_last) for name, m in models.items()}
        except CompressError as err:
            reason = str(err)
        if reason:
            LOG.warning("compare_latency: runtime %r skipped: %s", rt.name, reason)
            skipped[rt.name] = reason
        else:
            sessions.update({(rt.name, name): session for name, session in built.items()})
    timings: dict[RuntimeKey, RuntimeTiming] = {}
    with cudnn_benchmark(device), torch.inference_mode():
        for batch in tqdm(batch_sizes, desc="latency", leave=False, disable=not verbose):
            x = make_batch(example_inputs, batch, device=device, dtype=torch.float32, channels_last=False)
            feeds = {key: session.feed(x) for key, session in sessions.items()}
            samples = {}
            for rt in chosen:  # one runtime at a time, its models interleaved (see the module docstring)
                calls = {key: functools.partial(s.run, feeds[key]) for key, s in sessions.items() if key[0] == rt.name}
                if calls:
                    time.sleep(QUIET_S)
                    samples.update(_interleave(calls, device=device, warmup=settings.warmup, runs=runs))
            for rt in chosen:
                key = RuntimeKey(rt.name, str(device), settings.dtype, batch)
                timing = timings[key] = RuntimeTiming(key, version=rt.version(), threads=settings.threads,
                                                      skipped=skipped.get(rt.name))
                if timing.skipped:
                    continue
                for name in models:
                    timing.samples_ms[name] = samples[(rt.name, name)]
                    timing.stats[name] = Stats.of(samples[(rt.name, name)])
                    timing.max_rel_error[name] = sessions[(rt.name, name)].max_rel_error
                timing.info = sessions[(rt.name, next(iter(models)))].info
    return Comparison(names=list(models), results={}, timings=timings, settings=settings)


def latency(model: nn.Module, example_inputs: torch.Tensor, options: TimingOptions | None = None, *,
            verbose: bool = False, **shorthand: Any) -> LatencyResult:
    """Median and IQR of ms per forward for each batch size, in eager PyTorch (see :func:`compare_latency`)."""
    o = options_from(TimingOptions, options, shorthand, who="latency")
    if o.runtimes is not None:
        raise CompressError("latency: runtimes are compared with compare_latency (latency times eager PyTorch)")
    return compare_latency({"model": model}, example_inputs, o, verbose=verbose).results["model"]


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


class RuntimeKey(NamedTuple):
    """Where one :class:`RuntimeTiming` was measured."""

    runtime: str
    device: str
    dtype: str
    batch: int


@dataclass
class RuntimeTiming:
    """Every model's latency in one runtime at one (device, dtype, batch), or why the runtime was skipped.

    Attributes:
        key: runtime, device, dtype, batch.
        version: version of the runtime's library.
        threads: CPU threads the runtime was set to use.
        stats / samples_ms: per model name, the :class:`Stats` of ms per call and every timed call (ms).
        max_rel_error: per model name, the session's relative max error against eager float64.
        info: the baseline session's runtime settings in force (providers, OpenVINO properties, ...).
        skipped: why the runtime was not timed (unavailable, unsupported here, failed its check), else None.
    """

    key: RuntimeKey
    version: str = ""
    threads: int = 1
    stats: dict[str, Stats] = field(default_factory=dict)
    samples_ms: dict[str, list[float]] = field(default_factory=dict)
    max_rel_error: dict[str, float | None] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None


@dataclass
class Comparison:
    """Interleaved latencies of several models; ``names[0]`` is the baseline.

    Attributes:
        names: model names, baseline first.
        results: per model, its eager :class:`LatencyResult` (empty when timed with runtimes).
        timings: per (runtime, device, dtype, batch), a :class:`RuntimeTiming` (empty without runtimes).
        settings: how it was measured (defaults to the baseline result's settings).
    """

    names: list[str]
    results: dict[str, LatencyResult]
    timings: dict[RuntimeKey, RuntimeTiming] = field(default_factory=dict)
    settings: LatencySettings | None = None

    def __post_init__(self) -> None:
        if self.settings is None and self.results:
            self.settings = self.results[self.names[0]].settings

    def speedup(self, name: str, batch: int) -> float:
        """``baseline median / name median``: above 1 means ``name`` is faster."""
        return self.results[self.names[0]].median_ms(batch) / self.results[name].median_ms(batch)

    def rows(self) -> list[dict[str, Any]]:
        """One row per (other model, batch size): the report's ``latency`` entries; then :meth:`runtime_rows`."""
        if not self.results:
            return self.runtime_rows()
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
        return rows + self.runtime_rows()

    def runtime_rows(self) -> list[dict[str, Any]]:
        """One row per (runtime, device, dtype, batch, model), the baseline's included, or one row per skipped
        (runtime, device, dtype, batch) with its reason.

        ``verdict`` compares the model with the baseline in the same runtime (``"baseline"`` for the baseline);
        ``vs_torch`` compares the model in this runtime with itself in eager PyTorch at the same device, dtype
        and batch (``None`` for ``torch`` itself or when ``torch`` was not timed).
        """
        rows, s = [], self.settings
        for key, timing in self.timings.items():
            common = {"runtime": key.runtime, "version": timing.version, "device": key.device, "dtype": key.dtype,
                      "batch": key.batch, "threads": timing.threads, "runs": s.runs, "channels_last": s.channels_last,
                      "compiled": key.runtime == "torch-compile", "bn_folded": True}
            if timing.skipped:
                rows.append({**common, "model": None, "skipped": timing.skipped,
                             "verdict": f"not measured: {timing.skipped}"})
                continue
            eager = self.timings.get(key._replace(runtime="torch"))
            base = timing.stats[self.names[0]]
            for name in self.names:
                stats = timing.stats[name]
                torch_stats = eager.stats.get(name) if eager is not None and key.runtime != "torch" else None
                rows.append({**common, "model": name, "skipped": None, "baseline_ms": round(base.median_ms, 6),
                             "compressed_ms": round(stats.median_ms, 6), "baseline_iqr_ms": round(base.iqr_ms, 6),
                             "compressed_iqr_ms": round(stats.iqr_ms, 6),
                             "ratio": round(base.median_ms / stats.median_ms, 6),
                             "verdict": "baseline" if name == self.names[0] else verdict(base, stats,
                                                                                         device=key.device),
                             "max_rel_error": timing.max_rel_error[name],
                             "torch_ms": None if torch_stats is None else round(torch_stats.median_ms, 6),
                             "vs_torch": None if torch_stats is None else verdict(torch_stats, stats,
                                                                                  device=key.device)})
        return rows
