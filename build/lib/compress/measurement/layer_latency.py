"""Time per leaf module, from forward pre/post hooks, to show which layers got faster or slower.

On CPU each hook pair reads ``time.perf_counter``; on CUDA it records CUDA events on the current stream and
the elapsed times are read after one synchronisation per forward. Hook overhead (a few microseconds per
layer) is included, so per-layer sums exceed the plain forward time; compare layers between models measured
the same way rather than against :func:`~compress.measurement.latency.latency`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .timing import MIN_RUNS, Stats, as_dtype, cudnn_benchmark, dtype_name, make_batch, prepare, resolve_device
from .util import leaf_modules

__all__ = ["LayerLatency", "layer_latency"]


@dataclass
class LayerLatency:
    """Median and IQR of ms per forward for each leaf module (summed over calls within one forward).

    Attributes:
        ms: module name -> median ms.
        iqr_ms: module name -> interquartile range in ms.
        device / dtype / batch / runs: how it was measured.
    """

    ms: dict[str, float] = field(default_factory=dict)
    iqr_ms: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    dtype: str = "float32"
    batch: int = 1
    runs: int = MIN_RUNS

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "dtype": self.dtype, "batch": self.batch, "runs": self.runs,
                "ms": {k: round(v, 6) for k, v in self.ms.items()},
                "iqr_ms": {k: round(v, 6) for k, v in self.iqr_ms.items()}}


class _Clock:
    """Start/stop marks per module for one forward; CPU timestamps or CUDA events."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, Any, Any]] = []
        self.open: dict[int, tuple[str, Any]] = {}

    def _now(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self, name: str, module: nn.Module) -> None:
        self.open[id(module)] = (name, self._now())

    def stop(self, module: nn.Module) -> None:
        name, begin = self.open.pop(id(module))
        self.marks.append((name, begin, self._now()))

    def collect(self) -> dict[str, float]:
        """ms per module name for the forward just run (then clears the marks)."""
        if self.cuda:
            torch.cuda.synchronize()
        out: dict[str, float] = {}
        for name, begin, end in self.marks:
            ms = begin.elapsed_time(end) if self.cuda else (end - begin) * 1e3
            out[name] = out.get(name, 0.0) + ms
        self.marks.clear()
        return out


def _hooks(model: nn.Module, clock: _Clock) -> list:
    handles = []
    for name, m in leaf_modules(model):
        pre: Callable = lambda mod, args, n=name: clock.start(n, mod)  # noqa: E731
        post: Callable = lambda mod, args, out: clock.stop(mod)  # noqa: E731
        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    return handles


def layer_latency(model: nn.Module, example_inputs: torch.Tensor, *, device: torch.device | str = "cpu",
                  batch: int = 1, dtype: torch.dtype | str = torch.float32, channels_last: bool = False,
                  warmup: int = 3, runs: int = MIN_RUNS) -> LayerLatency:
    """Time every leaf module of a deep copy of ``model``.

    Args:
        model: not mutated (a copy is timed).
        example_inputs: ``(1, C, H, W)``; its first sample is repeated ``batch`` times.
        device / dtype / channels_last: as for :func:`~compress.measurement.latency.latency`.
        warmup: untimed forwards.
        runs: timed forwards (medians over these).

    Returns:
        A :class:`LayerLatency` keyed by the module names of ``model``.
    """
    device, dtype = resolve_device(device), as_dtype(dtype)
    twin = prepare(model, device=device, dtype=dtype, channels_last=channels_last, compile=False)
    x = make_batch(example_inputs, batch, device=device, dtype=dtype, channels_last=channels_last)
    clock = _Clock(device)
    handles = _hooks(twin, clock)
    samples: dict[str, list[float]] = {}
    try:
        with cudnn_benchmark(device), torch.inference_mode():
            for i in range(warmup + runs):
                twin(x)
                times = clock.collect()
                if i >= warmup:
                    for name, ms in times.items():
                        samples.setdefault(name, []).append(ms)
    finally:
        for h in handles:
            h.remove()
    stats = {name: Stats.of(s) for name, s in samples.items() if len(s) >= 2}
    return LayerLatency(ms={n: s.median_ms for n, s in stats.items()}, iqr_ms={n: s.iqr_ms for n, s in stats.items()},
                        device=str(device), dtype=dtype_name(dtype), batch=batch, runs=runs)
