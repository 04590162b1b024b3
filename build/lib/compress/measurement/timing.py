"""Low-level timing pieces shared by :mod:`latency` and :mod:`layer_latency`.

Models are never timed in place: :func:`prepare` deep-copies them before changing dtype, device or memory
format. CPU times come from ``time.perf_counter`` around a synchronous forward; CUDA times from CUDA events
recorded around the forward on the current stream (then synchronised), so host overhead is not mistaken for
kernel time and queued work is not missed.
"""
from __future__ import annotations

import contextlib
import copy
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from ..env import resolve_device
from ..errors import CompressError

__all__ = ["DTYPE_NAMES", "Stats", "as_dtype", "dtype_name", "resolve_device", "prepare", "make_batch", "to_layout",
           "time_call", "cudnn_benchmark", "num_threads", "MIN_RUNS"]

MIN_RUNS = 20  # fewer runs make the median and IQR too noisy to support a faster/slower verdict

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}

DTYPE_NAMES = tuple(_DTYPES)  # accepted spellings, for config validation


@dataclass(frozen=True)
class Stats:
    """Robust summary of repeated timings, in milliseconds.

    Attributes:
        median_ms: median time.
        q1_ms / q3_ms: first and third quartiles; ``iqr_ms = q3_ms - q1_ms``.
        min_ms: fastest run.
        runs: number of timed runs.
    """

    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    runs: int

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    @classmethod
    def of(cls, samples_ms: list[float]) -> "Stats":
        if len(samples_ms) < 2:
            raise ValueError("need at least two samples")
        q1, med, q3 = statistics.quantiles(samples_ms, n=4, method="inclusive")
        return cls(median_ms=med, q1_ms=q1, q3_ms=q3, min_ms=min(samples_ms), runs=len(samples_ms))

    def as_dict(self) -> dict[str, float | int]:
        return {"median_ms": round(self.median_ms, 6), "iqr_ms": round(self.iqr_ms, 6),
                "q1_ms": round(self.q1_ms, 6), "q3_ms": round(self.q3_ms, 6), "min_ms": round(self.min_ms, 6),
                "runs": self.runs}


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.float32`` / ``"float32"`` / ``"bf16"`` ... -> a floating ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    raise CompressError(f"latency dtype: expected one of {', '.join(sorted(_DTYPES))}, got {dtype!r}")


def dtype_name(dtype: torch.dtype | str) -> str:
    return str(as_dtype(dtype)).removeprefix("torch.")


def prepare(model: nn.Module, *, device: torch.device, dtype: torch.dtype, channels_last: bool,
            compile: bool) -> nn.Module:
    """A deep copy of ``model`` in eval mode, moved/cast as requested (the original is untouched)."""
    twin = copy.deepcopy(model).eval().to(device=device, dtype=dtype)
    if channels_last:
        twin = twin.to(memory_format=torch.channels_last)
    for p in twin.parameters():
        p.requires_grad_(False)
    return torch.compile(twin) if compile else twin


def make_batch(example_inputs: torch.Tensor, batch: int, *, device: torch.device, dtype: torch.dtype,
               channels_last: bool) -> torch.Tensor:
    """Repeat the first sample of ``example_inputs`` ``(1, C, H, W)`` into ``(batch, C, H, W)``."""
    if not isinstance(example_inputs, torch.Tensor) or example_inputs.dim() < 2:
        raise CompressError("latency: example_inputs must be one tensor of shape (1, C, H, W), got "
                            f"{type(example_inputs).__name__}")
    x = example_inputs[:1].expand(batch, *example_inputs.shape[1:])
    return to_layout(x, device=device, dtype=dtype, channels_last=channels_last)


def to_layout(x: torch.Tensor, *, device: torch.device, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """``x`` on ``device`` in ``dtype``, contiguous (NHWC when ``channels_last`` and ``x`` is ``(B, C, H, W)``)."""
    x = x.to(device=device, dtype=dtype)
    fmt = torch.channels_last if channels_last and x.dim() == 4 else torch.contiguous_format
    return x.contiguous(memory_format=fmt)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds one call of ``fn`` takes on ``device`` (waits for the GPU to finish)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


@contextlib.contextmanager
def cudnn_benchmark(device: torch.device) -> Iterator[None]:
    """Enable cuDNN autotuning while timing on CUDA (restored afterwards); a no-op on CPU."""
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[None]:
    """Use ``threads`` CPU intra-op threads inside the block (``None``: leave the setting alone)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
