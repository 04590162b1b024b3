"""Per-device latency table: measured time of every candidate form of every conv, cached on disk.

For each conv the table holds the time of the dense layer (``"dense"``), of the dense layer at each candidate
output width (``"out:W"``; for a depthwise conv input and output shrink together) and input width (``"in:W"``),
and of each rewrite (``"grouped:2"``, ``"separable:1"``, ...), all at the layer's real input size, the planned
batch, dtype, memory format and device, in the planned *runtime* (:mod:`compress.measurement.runtimes`): with
``torch`` each candidate is an eager module; with any other runtime (``onnxruntime``, ``openvino``, ...) each
candidate is built as its own small model and turned into a checked session of that runtime
(:meth:`~compress.measurement.runtimes.Runtime.session`), whose calls are timed. The staircase of time against
channel count is therefore measured point by point where the model will run, never assumed from MACs or
carried over from another runtime (ONNX Runtime's blocked kernels favour other widths than eager PyTorch's).

Entries are cached as JSON under ``cache_dir`` (default ``$COMPRESS_CACHE/latency``), one file per
(device name, torch version, runtime name and version, dtype, batch, memory format), keyed inside by the
layer's shape signature, so identical layers (and later runs) reuse measurements.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from ..env import cache_root, cpu_model
from ..io import atomic_write_json
from ..measurement.runtimes import runtime as runtime_named
from ..measurement.timing import as_dtype, cudnn_benchmark, dtype_name, resolve_device, time_call
from .candidates import Form, aligned_widths, rewrite_forms
from .shapes import ConvShape

__all__ = ["Conditions", "TableKey", "TableRequest", "LayerTimes", "LatencyTable", "build_table", "default_requests",
           "measure_ms", "runtime_calls", "device_name", "default_table_dir"]

_FORMAT = 3  # 2: grouped forms are timed with their channel permutes; 3: keyed by runtime


def device_name(device: torch.device | str) -> str:
    """What the table is keyed by: the CPU model and thread count, or the GPU's name."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def default_table_dir() -> Path:
    """``$COMPRESS_CACHE/latency`` (``~/.cache/compress/latency`` when the variable is unset)."""
    return cache_root() / "latency"


@dataclass(frozen=True)
class Conditions:
    """Where and how the planner times a candidate: device, batch, dtype, memory format and runtime.

    Attributes:
        device: ``"cpu"``, ``"cuda"`` or a :class:`torch.device` (resolved on use).
        batch: the batch size timed.
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        channels_last: NHWC memory format.
        runtime: a :mod:`compress.measurement.runtimes` name (``"torch"``: eager PyTorch).
    """

    device: torch.device | str = "cpu"
    batch: int = 64
    dtype: torch.dtype | str = torch.float32
    channels_last: bool = False
    runtime: str = "torch"


@dataclass(frozen=True)
class TableKey:
    """The measurement conditions a table file holds entries for."""

    device: str
    torch: str
    dtype: str
    batch: int
    channels_last: bool
    runtime: str = "torch"
    runtime_version: str = ""
    runtime_revision: int = 0

    def file_name(self) -> str:
        text = json.dumps(self.__dict__, sort_keys=True)
        slug = re.sub(r"[^A-Za-z0-9]+", "-",
                      f"{self.runtime}-{self.device}-{self.dtype}-b{self.batch}").strip("-")[:80]
        return f"{slug}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.json"

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class TableRequest:
    """What to measure for one conv.

    Attributes:
        shape: the conv as it runs in the model.
        out_widths: output widths to time (for a depthwise conv: channel counts, input and output together).
        in_widths: input widths to time (output at full width).
        forms: rewrites to time at the full shape.
    """

    shape: ConvShape
    out_widths: tuple[int, ...] = ()
    in_widths: tuple[int, ...] = ()
    forms: tuple[Form, ...] = ()

    def entries(self) -> dict[str, tuple[ConvShape, Form | None]]:
        """Entry name -> (shape to build, rewrite or ``None`` for a dense conv)."""
        s = self.shape
        out: dict[str, tuple[ConvShape, Form | None]] = {"dense": (s, None)}
        for w in self.out_widths:
            out[f"out:{w}"] = (s.with_channels(w if s.depthwise else s.in_channels, w), None)
        for w in self.in_widths:
            out[f"in:{w}"] = (s.with_channels(w, s.out_channels), None)
        for f in self.forms:
            out[f.key] = (s, f)
        return out


@dataclass
class LayerTimes:
    """Measured milliseconds of one conv's candidates (see the module docstring for the entry names)."""

    name: str
    shape: ConvShape
    ms: dict[str, float] = field(default_factory=dict)

    @property
    def full_ms(self) -> float:
        return self.ms["dense"]

    def out_ms(self, width: int) -> float:
        """Time at output width ``width`` (the full width gives the dense time)."""
        return self.full_ms if width == self.shape.out_channels else self.ms[f"out:{width}"]

    def in_ms(self, width: int) -> float:
        return self.full_ms if width == self.shape.in_channels else self.ms[f"in:{width}"]

    def staircase(self) -> dict[int, float]:
        """Output width -> measured ms, widest first (the full width included)."""
        pts = {int(k[4:]): v for k, v in self.ms.items() if k.startswith("out:")}
        pts[self.shape.out_channels] = self.full_ms
        return dict(sorted(pts.items(), reverse=True))


@dataclass
class LatencyTable:
    """Measured candidate times of a model's convs under one :class:`TableKey`.

    Attributes:
        key: device, torch version, dtype, batch, memory format.
        layers: conv name -> :class:`LayerTimes`.
        measured: entries timed by this call; ``reused``: entries read from the cache.
        path: the cache file (``None`` when caching was off).
    """

    key: TableKey
    layers: dict[str, LayerTimes] = field(default_factory=dict)
    measured: int = 0
    reused: int = 0
    path: Path | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    warmup: int = 2
    runs: int = 5
    known: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)

    def entry_ms(self, shape: ConvShape, form: Form | None = None) -> float:
        """Measured ms of one exact conv shape, dense or rewritten: read from the cache, else timed now.

        The planner asks for rewrites at pruned widths this way: a grouped or depthwise kernel at a few channels
        does not scale like the wide one (on CPU it can be slower than the dense conv it replaces), so its time
        at the widths actually planned is measured rather than scaled. A rewrite is always timed interleaved with
        the dense conv of the same shape (both cached), so their ratio is free of what differs between
        measurement sessions (cache warmth, clock, load).
        """
        sig, name = shape.signature(), form.key if form is not None else "dense"
        have = self.known.setdefault(sig, {})
        todo = {e: spec for e, spec in (("dense", (shape, None)), (name, (shape, form))) if e not in have}
        if todo:
            with cudnn_benchmark(self.device):
                new = measure_ms(_prepared(todo, self.key, self.device), device=self.device, warmup=self.warmup,
                                 runs=self.runs)
            have.update(new)
            self.measured += len(new)
            if self.path is not None:
                _save(self.path, self.key, {sig: new})
        return have[name]

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key.as_dict(), "measured": self.measured, "reused": self.reused,
                "path": str(self.path) if self.path else None,
                "layers": {n: {"signature": t.shape.signature(), "ms": {k: round(v, 6) for k, v in t.ms.items()}}
                           for n, t in self.layers.items()}}


def measure_ms(modules: dict[str, tuple[Callable[[Any], Any], Any]], *, device: torch.device, warmup: int,
               runs: int, agree: float = 0.1, max_factor: int = 5) -> dict[str, float]:
    """Fastest confirmed time of each ``module(x)`` in ms, calls interleaved across the entries.

    The minimum, not the median: background load and scheduler stalls only ever add time, so on a shared
    machine the fastest call is the most repeatable estimate of a layer's own cost. Interleaving spreads each
    entry's calls over time, and an entry keeps being timed (up to ``max_factor * runs`` calls) until a second
    call comes within ``agree`` of its fastest, so one burst of load cannot set an entry's time. Whole-model
    checks (:func:`compress.measurement.compare_latency`) use medians.

    Args:
        modules: entry name -> (module or runtime call, its input batch), on ``device``
            (see :func:`runtime_calls`).
        device: where they run (CUDA calls are timed with events).
        warmup: untimed calls per entry first.
        runs: timed calls per entry at least.
        agree: relative tolerance for the confirming call.
        max_factor: bound on calls per entry, as a multiple of ``runs``.
    """
    samples: dict[str, list[float]] = {name: [] for name in modules}
    active = list(modules)
    with torch.inference_mode():
        for module, x in modules.values():
            for _ in range(warmup):
                module(x)
        for _ in range(max(1, runs) * max_factor):
            for name in active:
                module, x = modules[name]
                samples[name].append(time_call(lambda: module(x), device))
            active = [n for n in active if not _settled(samples[n], runs, agree)]
            if not active:
                break
    return {name: min(s) for name, s in samples.items()}


def _settled(samples: list[float], runs: int, agree: float) -> bool:
    fastest = min(samples)
    return len(samples) >= runs and sum(v <= fastest * (1.0 + agree) for v in samples) >= 2


def _prepared(entries: dict[str, tuple[ConvShape, Form | None]], key: TableKey,
              device: torch.device) -> dict[str, tuple[Callable[[Any], Any], Any]]:
    """Each entry's call and input in the table's runtime: a module (random weights) and its input ``(batch,
    C, H, W)`` in the table's dtype and memory format (see :func:`runtime_calls`)."""
    dtype = as_dtype(key.dtype)
    fmt = torch.channels_last if key.channels_last else torch.contiguous_format
    inputs: dict[tuple, torch.Tensor] = {}
    out = {}
    for name, (shape, form) in entries.items():
        module = shape.build(device=device, dtype=dtype) if form is None else form.module(shape, device=device,
                                                                                           dtype=dtype)
        module = module.to(device=device, dtype=dtype, memory_format=fmt).eval().requires_grad_(False)
        size = (key.batch, shape.in_channels, *shape.in_hw)
        if size not in inputs:
            inputs[size] = torch.randn(size, device=device, dtype=dtype).contiguous(memory_format=fmt)
        out[name] = (module, inputs[size])
    return runtime_calls(out, runtime=key.runtime, device=device, dtype=dtype, channels_last=key.channels_last)


def runtime_calls(modules: dict[str, tuple[nn.Module, torch.Tensor]], *, runtime: str, device: torch.device,
                  dtype: torch.dtype, channels_last: bool) -> dict[str, tuple[Callable[[Any], Any], Any]]:
    """``name -> (call, input)`` timing each ``module(x)`` in ``runtime`` (what :func:`measure_ms` takes).

    ``torch``: the eager modules themselves, as given (on ``device``, in ``dtype``). Any other runtime: each
    module becomes a checked session of it (BN-folded, output compared with eager at ``x``'s batch size;
    built on the CPU in float32, as :meth:`~compress.measurement.runtimes.Runtime.session` requires), timed as
    ``session.run(session.feed(x))`` so the conversion to the runtime's input stays out of the timed call.

    Raises:
        CompressError: the runtime cannot run here, or a session fails its check (the message names both).
    """
    if runtime == "torch":
        return dict(modules)
    where = runtime_named(runtime)
    out: dict[str, tuple[Callable[[Any], Any], Any]] = {}
    for name, (module, x) in modules.items():
        cpu = module.to(device="cpu", dtype=torch.float32, memory_format=torch.contiguous_format)
        batch = x.to(device="cpu", dtype=torch.float32).contiguous()
        session = where.session(cpu, batch, device=device, dtype=dtype, threads=torch.get_num_threads(),
                                batch=batch.shape[0], channels_last=channels_last)
        out[name] = (session.run, session.feed(batch))
    return out


def _load(path: Path | None) -> dict[str, dict[str, float]]:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a damaged cache is only a cache: measure again
    return data.get("layers", {}) if data.get("format") == _FORMAT else {}


def _save(path: Path, key: TableKey, entries: dict[str, dict[str, float]]) -> None:
    merged = _load(path)  # keep what a concurrent run may have added meanwhile
    for sig, ms in entries.items():
        merged.setdefault(sig, {}).update(ms)
    atomic_write_json(path, {"format": _FORMAT, "key": key.as_dict(), "layers": merged})


def build_table(requests: dict[str, TableRequest], conditions: Conditions = Conditions(), *,
                cache_dir: str | os.PathLike | None = None, cache: bool = True, warmup: int | None = None,
                runs: int | None = None, verbose: bool = True) -> LatencyTable:
    """Time every requested entry not already in the cache.

    Args:
        requests: conv name -> :class:`TableRequest`.
        conditions: device, batch, dtype, memory format and runtime (all part of the cache key, with the
            runtime's version).
        cache_dir: directory of the JSON cache (default :func:`default_table_dir`).
        cache: read and write the cache.
        warmup / runs: untimed and (at least) timed calls per entry (default 2/5 on CPU, 10/20 on CUDA); the
            fastest confirmed time is kept (see :func:`measure_ms`).
        verbose: progress bar over convs.

    Returns:
        A :class:`LatencyTable` with one :class:`LayerTimes` per request.
    """
    device, dtype = resolve_device(conditions.device), as_dtype(conditions.dtype)
    batch, channels_last, runtime = conditions.batch, conditions.channels_last, conditions.runtime
    cuda = device.type == "cuda"
    warmup = (10 if cuda else 2) if warmup is None else warmup
    runs = (20 if cuda else 5) if runs is None else runs
    key = TableKey(device_name(device), torch.__version__, dtype_name(dtype), batch, channels_last, runtime,
                   _runtime_version(runtime), runtime_named(runtime).revision)
    path = Path(cache_dir or default_table_dir()) / key.file_name() if cache else None
    known = _load(path)
    table = LatencyTable(key=key, path=path, device=device, warmup=warmup, runs=runs, known=known)
    with cudnn_benchmark(device):
        for name, req in tqdm(requests.items(), desc="latency table", leave=False, disable=not verbose):
            sig = req.shape.signature()
            have = known.setdefault(sig, {})
            todo = {e: spec for e, spec in req.entries().items() if e not in have}
            new = measure_ms(_prepared(todo, key, device), device=device, warmup=warmup, runs=runs) if todo else {}
            have.update(new)
            table.measured += len(new)
            table.reused += len(req.entries()) - len(new)
            table.layers[name] = LayerTimes(name, req.shape, {e: have[e] for e in req.entries()})
            if new and path is not None:
                _save(path, key, {sig: new})
    return table


def _runtime_version(name: str) -> str:
    """The version of ``name``'s library (torch's own for ``torch``)."""
    return runtime_named(name).version()


def default_requests(shapes: dict[str, ConvShape], *, align: int, min_keep: float = 0.25, max_widths: int = 8,
                     kinds: tuple[str, ...] = ("prune", "separable", "grouped")) -> dict[str, TableRequest]:
    """Requests for every conv on its own: aligned output and input widths (with ``"prune"``) and rewrites.

    The planner builds narrower requests from the model's coupled channel groups; this is the standalone view.
    """
    out = {}
    for name, s in shapes.items():
        widths = lambda c: tuple(aligned_widths(c, align=align, min_keep=min_keep, max_widths=max_widths))  # noqa
        prune = "prune" in kinds and (s.groups == 1 or s.depthwise)
        out[name] = TableRequest(s, out_widths=widths(s.out_channels) if prune else (),
                                 in_widths=widths(s.in_channels) if prune and not s.depthwise else (),
                                 forms=tuple(rewrite_forms(s, kinds)))
    return out
