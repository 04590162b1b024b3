"""``PlanOptions``: what :func:`~compress.planning.plan` plans for and how, validated once.

The same frozen dataclass is the recipe's ``plan`` step (``plan: {runtime: onnxruntime, device: cpu, batch: 64,
target: {latency: 0.5}}``, parsed strictly by :func:`compress.config.parse`) and the argument of the Python
:func:`~compress.planning.plan`, so both read one set of defaults and fail with one wording:
``target.latency: expected a fraction in (0, 1], got 0.0``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ..config import MAX_BATCH, MAX_RUNS, Config, check
from ..measurement.runtimes import runtime, runtimes
from ..measurement.timing import DTYPE_NAMES, MIN_RUNS, dtype_name
from .candidates import form_kinds

__all__ = ["PlanOptions", "TARGETS", "DEFAULT_FORMS", "DEVICES"]

TARGETS = ("latency", "macs", "params")
DEFAULT_FORMS = ("prune", "separable", "grouped")
DEVICES = ("cpu", "cuda")


def _integer(value: Any, low: int, high: int | None = None) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value >= low
            and (high is None or value <= high))


def _fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 < value <= 1.0


@dataclass(frozen=True)
class PlanOptions(Config):
    """Options of a plan (the ``plan`` recipe step and :func:`~compress.planning.plan`).

    Attributes:
        target: exactly one of ``latency`` / ``macs`` / ``params`` mapped to a fraction of the original in
            (0, 1]; ``latency`` is the original's measured latency in ``runtime`` on ``device``.
        device: where latency is measured and planned for (``"cpu"`` or ``"cuda"``).
        batch / dtype / channels_last: the inference setting planned for.
        runtime: where the model will run (:mod:`compress.measurement.runtimes`: ``torch``, ``torch-compile``,
            ``onnxruntime``, ``openvino``): the per-layer latency table times each candidate conv as a session
            of that runtime, and the closed loop times whole models in it.
        forms: allowed changes, a subset of ``prune``, the rewrite kinds (``grouped``, ``separable``,
            ``shuffle``, ``bottleneck``, ...) and ``drop`` (replace an identity-shortcut residual block).
        align: channel alignment of pruned widths (``None``: 8 on CPU, 32 for CUDA half precision, 16 CUDA
            fp32; see :func:`~compress.planning.candidates.default_align`).
        max_iters: plan-apply-measure rounds at most.
        min_keep: smallest fraction of a group's channels kept, to begin with; ``min_keep_limit``: how far it
            may be halved when a latency target is out of reach.
        max_widths: candidate widths per group (the table measures each).
        decrement: fraction of the original predicted cost each greedy step removes.
        tolerance: the target counts as met up to ``target + tolerance``.
        runs: timed rounds of the end-to-end comparison (at least 20).
        table_runs: timed calls per table entry at least (``None``: 5 on CPU, 20 on CUDA).
        cache_dir: latency-table directory (``None``: ``$COMPRESS_CACHE/latency``).
        calib_batches: calibration batches used (analysis when none was given, drop errors, data-aware
            separable rewrites).
        fold_bn: plan for and measure the deploy form, BatchNorms folded into their convs, in the original and
            every candidate alike (runtimes other than ``torch`` always run the folded model).
        measure_latency: for MACs/params targets, also measure the final model's latency (for the verdict).
    """

    target: dict[str, float]
    device: str = "cpu"
    batch: int = 64
    dtype: str = "float32"
    channels_last: bool = False
    runtime: str = "torch"
    forms: tuple[str, ...] = DEFAULT_FORMS
    align: int | None = None
    max_iters: int = 3
    min_keep: float = 0.25
    min_keep_limit: float = 0.125
    max_widths: int = 8
    decrement: float = 0.05
    tolerance: float = 0.02
    runs: int = 20
    table_runs: int | None = None
    cache_dir: str | None = None
    calib_batches: int = 4
    fold_bn: bool = True
    measure_latency: bool = True

    def __post_init__(self) -> None:
        # Python callers may pass a torch.dtype / torch.device or lists: keep one spelling of each
        if isinstance(self.dtype, torch.dtype):
            object.__setattr__(self, "dtype", dtype_name(self.dtype))
        if isinstance(self.device, torch.device):
            object.__setattr__(self, "device", self.device.type)
        if isinstance(self.forms, list):
            object.__setattr__(self, "forms", tuple(self.forms))
        self.validate()

    @property
    def metric(self) -> str:
        """The target's quantity: ``"latency"``, ``"macs"`` or ``"params"``."""
        return next(iter(self.target))

    @property
    def value(self) -> float:
        """The target's fraction of the original."""
        return float(self.target[self.metric])

    def replace(self, **changes: Any) -> "PlanOptions":
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        keys = list(self.target) if isinstance(self.target, dict) else []
        check(isinstance(self.target, dict) and len(keys) == 1 and keys[0] in TARGETS, "target",
              f"a mapping of exactly one of {', '.join(TARGETS)} to a fraction, e.g. {{latency: 0.5}}",
              "<" + (", ".join(map(str, keys)) or "empty") + ">" if isinstance(self.target, dict) else self.target)
        check(_fraction(self.target[keys[0]]), f"target.{keys[0]}", "a fraction in (0, 1]", self.target[keys[0]])
        check(self.device in DEVICES, "device", f"one of {', '.join(DEVICES)}", self.device)
        check(_integer(self.batch, 1, MAX_BATCH), "batch", f"an integer in 1..{MAX_BATCH}", self.batch)
        check(self.dtype in DTYPE_NAMES, "dtype", f"one of {', '.join(DTYPE_NAMES)}", self.dtype)
        check(isinstance(self.channels_last, bool), "channels_last", "true or false", self.channels_last)
        check(self.runtime in runtimes(), "runtime", f"one of {', '.join(runtimes())}", self.runtime)
        where = runtime(self.runtime)
        missing = where.available()
        check(missing is None, "runtime", f"a runtime usable here ({missing})", self.runtime)
        check(self.device in where.devices, "device", f"one of {', '.join(where.devices)} for runtime "
              f"{self.runtime}", self.device)
        check(dtype_name(self.dtype) in where.dtypes, "dtype", f"one of {', '.join(where.dtypes)} for runtime "
              f"{self.runtime}", self.dtype)
        check(self.fold_bn or self.runtime == "torch", "fold_bn", f"true for runtime {self.runtime} (its "
              "sessions always run the BN-folded model)", self.fold_bn)
        known = form_kinds()
        check(isinstance(self.forms, tuple) and len(self.forms) > 0 and all(f in known for f in self.forms),
              "forms", f"a non-empty list of {', '.join(known)}", "<" + ", ".join(map(str, self.forms)) + ">")
        check(self.align is None or _integer(self.align, 1), "align", "null or an integer >= 1", self.align)
        check(_integer(self.max_iters, 1), "max_iters", "an integer >= 1", self.max_iters)
        check(_fraction(self.min_keep), "min_keep", "a fraction in (0, 1]", self.min_keep)
        check(_fraction(self.min_keep_limit) and self.min_keep_limit <= self.min_keep, "min_keep_limit",
              f"a fraction in (0, min_keep={self.min_keep}]", self.min_keep_limit)
        check(_integer(self.max_widths, 1), "max_widths", "an integer >= 1", self.max_widths)
        check(_fraction(self.decrement), "decrement", "a fraction in (0, 1]", self.decrement)
        check(isinstance(self.tolerance, (int, float)) and not isinstance(self.tolerance, bool)
              and 0.0 <= self.tolerance < 1.0, "tolerance", "a number in [0, 1)", self.tolerance)
        check(_integer(self.runs, MIN_RUNS, MAX_RUNS), "runs", f"an integer in {MIN_RUNS}..{MAX_RUNS}", self.runs)
        check(self.table_runs is None or _integer(self.table_runs, 1, MAX_RUNS), "table_runs",
              f"null or an integer in 1..{MAX_RUNS}", self.table_runs)
        check(self.cache_dir is None or isinstance(self.cache_dir, str), "cache_dir", "null or a path",
              self.cache_dir)
        check(_integer(self.calib_batches, 1), "calib_batches", "an integer >= 1", self.calib_batches)
        for name in ("fold_bn", "measure_latency"):
            check(isinstance(getattr(self, name), bool), name, "true or false", getattr(self, name))
