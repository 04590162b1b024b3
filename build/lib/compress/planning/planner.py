"""``plan``: choose per-layer widths, rewrites and dropped blocks that meet a latency / MACs / parameter target
on a device.

Users ask for "2x faster on my device", not "50% fewer MACs", and fewer MACs is not less time: a depthwise or
shuffled layer can lose to the dense conv it replaces on a GPU, and a width off the kernel's tile size can be
slower than a wider one. So the plan is made against measured latency (NetAdapt, Yang et al. 2018; HALP,
Shen et al. 2022):

1. trace the model (shapes, torch-pruning channel groups, identity-shortcut residual blocks that could be
   dropped whole: :mod:`~compress.planning.blocks`), price each candidate's accuracy cost
   (:mod:`~compress.planning.costs`) and, for a latency target, measure every candidate's time on the device
   (:mod:`~compress.planning.table`, cached) and the original's end-to-end time: what the convs' table times do
   not add up to (activations, adds, pooling, per-op dispatch: at batch 1 a large share) is taken as a fixed
   part of the predicted time (a pessimistic reading at large batches, where activations and adds shrink with
   the channels: the measured rounds correct it). When even the deepest plan the search can find cannot reach
   the target, the smallest kept fraction of each group (``min_keep``) is halved, down to ``min_keep_limit``
   (:mod:`~compress.planning.setup`);
2. greedily shrink the predicted latency (:mod:`~compress.planning.greedy`);
3. apply the plan to a copy and measure it end to end against the original in one interleaved run; if the
   target is missed, re-aim the predicted target by the observed prediction error and repeat (bounded); if
   it is beaten by far, re-aim the other way to give accuracy back. The round returned is the cheapest (in
   predicted accuracy cost) that met the target, else the one measured fastest; for a latency target, when no
   round was measured faster than the original, the plan is empty (the model is left as it is) and says so
   (:mod:`~compress.planning.search`, measuring through :mod:`~compress.planning.runner`).

Latency is measured, by default, on models in deploy form, their BatchNorms folded into the convs
(:func:`~compress.transforms.blocks.fold_bn.fold_batchnorm`): the original and every candidate alike, and the table's
convs carry the bias the fold gives them.

The returned :class:`~compress.planning.result.Plan` holds the choices, predicted and measured ratios and a
verdict that says so loudly when the planned model is slower than the original.
"""
from __future__ import annotations

import logging

from itertools import islice
from typing import Any, Iterable

import torch
from torch import nn

from ..errors import CompressError
from ..measurement.timing import as_dtype, dtype_name, resolve_device
from .candidates import check_forms, default_align
from .result import Plan
from .runner import Runner
from .search import EMPTY, search
from .setup import Setup

__all__ = ["plan", "check_target", "DEFAULT_FORMS", "TARGETS"]

LOG = logging.getLogger(__name__)

DEFAULT_FORMS = ("prune", "separable", "grouped")
TARGETS = ("latency", "macs", "params")


def check_target(target: Any) -> tuple[str, float]:
    """``{"latency" | "macs" | "params": value in (0, 1]}`` -> ``(metric, value)``; else :class:`CompressError`."""
    if not isinstance(target, dict) or len(target) != 1 or next(iter(target)) not in TARGETS:
        raise CompressError(f"plan target: expected exactly one of {', '.join(TARGETS)} mapped to a fraction of the "
                            f"original, e.g. {{'latency': 0.5}}; got {target!r}")
    metric, value = next(iter(target.items()))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise CompressError(f"plan target {metric}: expected a fraction in (0, 1], got {value!r}")
    return metric, float(value)


def _verdict(metric: str, value: float, met: bool, measured: float, predicted: float, row: dict | None,
             macs_ratio: float) -> str:
    status = "met" if met else "NOT MET"
    text = (f"{metric} target {value:g}x: {status} (measured {measured:.3f}x of the original, predicted "
            f"{predicted:.3f}x; MACs {macs_ratio:.3f}x)")
    if row is None:
        return text + "; latency not measured"
    folded = ", BN folded in both models" if row.get("bn_folded") else ""
    return (f"{text}; latency {row['baseline_ms']:.3f} ms -> {row['compressed_ms']:.3f} ms at batch {row['batch']} "
            f"{row['dtype']}{' channels_last' if row['channels_last'] else ''}{folded} on {row['device']}: "
            f"{row['verdict']}")


def _check_options(batch: int, max_iters: int, decrement: float, tolerance: float, min_keep: float,
                   min_keep_limit: float) -> None:
    if not isinstance(batch, int) or batch < 1:
        raise CompressError(f"plan batch: expected an integer >= 1, got {batch!r}")
    if not isinstance(max_iters, int) or max_iters < 1:
        raise CompressError(f"plan max_iters: expected an integer >= 1, got {max_iters!r}")
    if not 0.0 < decrement <= 1.0:
        raise CompressError(f"plan decrement: expected a fraction in (0, 1], got {decrement!r}")
    if tolerance < 0.0:
        raise CompressError(f"plan tolerance: expected >= 0, got {tolerance!r}")
    if not 0.0 < min_keep_limit <= min_keep <= 1.0:
        raise CompressError(f"plan min_keep / min_keep_limit: expected 0 < min_keep_limit <= min_keep <= 1, got "
                            f"{min_keep!r} / {min_keep_limit!r}")


def _analysis(model: nn.Module, analysis: Any, batches: list, verbose: bool) -> Any:
    if analysis is not None or not batches:
        return analysis
    from ..analysis import analyze

    return analyze(model, batches, verbose=verbose)


def _drop_errors(model: nn.Module, batches: list, verbose: bool) -> dict[str, float] | None:
    """Each droppable block's drop error on ``batches`` (``None`` without data: blocks are then not dropped)."""
    if not batches:
        return None
    from ..transforms.blocks.drop import block_drop_errors

    return block_drop_errors(model, batches, verbose=verbose)


def plan(model: nn.Module, example_inputs: torch.Tensor, *, target: dict[str, float],
         device: torch.device | str = "cpu", batch: int = 64, dtype: torch.dtype | str = torch.float32,
         channels_last: bool = False, analysis: Any = None, calib: Iterable | None = None,
         forms: tuple[str, ...] = DEFAULT_FORMS, max_iters: int = 3, align: int | None = None,
         min_keep: float = 0.25, min_keep_limit: float = 0.125, max_widths: int = 8, decrement: float = 0.05,
         tolerance: float = 0.02, runs: int = 20, table_runs: int | None = None, cache_dir: str | None = None,
         calib_batches: int = 4, fold_bn: bool = True, measure_latency: bool = True, verbose: bool = True) -> Plan:
    """Plan pruning widths and rewrites of ``model`` that meet ``target`` at least predicted accuracy cost.

    The model is never modified (candidates are applied to deep copies); apply the result with
    :func:`~compress.planning.apply.apply_plan`.

    Args:
        model: the trained network.
        example_inputs: ``(1, C, H, W)`` on the model's device (its first sample is repeated to ``batch``).
        target: ``{"latency": f}`` (fraction of the original's measured latency on ``device``), or
            ``{"macs": f}`` / ``{"params": f}``, with ``0 < f <= 1``.
        device / batch / dtype / channels_last: where and how latency is measured and planned for.
        analysis: an :class:`~compress.analysis.Analysis` of ``model`` (channel statistics, dead channels,
            correlations) for accuracy costs.
        calib: batches (``(images, labels)`` or images) to analyse the model with when ``analysis`` is ``None``
            (with neither, costs come from weight magnitudes), to price dropping residual blocks (``drop``
            needs them: without, no block is dropped) and to price and build separable rewrites data-aware
            (pass the same batches to :func:`~compress.planning.apply.apply_plan`).
        forms: allowed changes, a subset of ``prune``, ``grouped``, ``separable``, ``shuffle``, ``bottleneck``
            and ``drop`` (replace an identity-shortcut residual block by the identity).
        max_iters: plan-apply-measure rounds at most.
        align: channel alignment of pruned widths (default 8 on CPU, 32 for CUDA half precision, 16 CUDA fp32).
        min_keep: smallest fraction of a group's channels kept, to begin with.
        min_keep_limit: how far ``min_keep`` may be halved when a latency target is predicted out of reach.
        max_widths: candidate widths per group (the table measures each).
        decrement: fraction of the original predicted cost each greedy step removes.
        tolerance: the target counts as met up to ``target + tolerance``.
        runs: timed rounds of the end-to-end comparison (at least 20).
        table_runs: timed calls per table entry at least (default 5 on CPU, 20 on CUDA).
        cache_dir: latency-table directory (default ``$COMPRESS_CACHE/latency``).
        calib_batches: batches of ``calib`` used.
        fold_bn: measure latency in deploy form, BatchNorms folded into their convs, in the original and every
            candidate alike (and the table's convs with the bias the fold gives them).
        measure_latency: for MACs/params targets, also measure the final model's latency (for the verdict).
        verbose: progress bars and one line per round.

    Returns:
        A :class:`~compress.planning.result.Plan`.
    """
    metric, value = check_target(target)
    forms = check_forms(forms)
    _check_options(batch, max_iters, decrement, tolerance, min_keep, min_keep_limit)
    device, dtype = resolve_device(device), as_dtype(dtype)
    align = align or default_align(str(device), dtype)
    x = example_inputs[:1]
    batches = list(islice(calib, calib_batches)) if calib is not None else []  # read once: used twice
    analysis = _analysis(model, analysis, batches, verbose)
    drop_errors = _drop_errors(model, batches, verbose) if "drop" in forms else None
    runner = Runner(model, x, device=device, batch=batch, dtype=dtype, channels_last=channels_last, runs=runs,
                    fold_bn=fold_bn, calib=batches or None, verbose=verbose)
    setup = Setup(model, x, metric, forms=forms, align=align, max_widths=max_widths, analysis=analysis,
                  device=device, batch=batch, dtype=dtype, channels_last=channels_last, cache_dir=cache_dir,
                  table_runs=table_runs, fold_bn=fold_bn, drop_errors=drop_errors, verbose=verbose)
    space = setup.reaching(runner, value, min_keep, min_keep_limit)
    result = Plan(target={metric: value}, device=str(device), dtype=dtype_name(dtype), batch=batch,
                  channels_last=channels_last, align=align, tolerance=tolerance, notes=list(space.problem.notes))
    best = search(space, setup, runner, result, max_iters=max_iters, decrement=decrement, verbose=verbose)
    if metric == "latency":
        result.notes.insert(0, f"latency {'of BN-folded models (deploy form) ' if fold_bn else ''}on both sides; "
                               f"fixed part of the predicted time (not in the conv table): {space.other:.4g} ms of "
                               f"{space.start:.4g} ms")
    result.notes[1:1] = setup.notes
    if metric != "latency" and measure_latency:
        best.measured.update({k: v for k, v in runner.measure(best.model, latency=True).items() if k != metric})
    m = best.measured
    result.choices, result.predicted_ratio, result.measured_ratio, result.met = (best.choices, best.predicted,
                                                                                 m[metric], best.met)
    result.latency, result.macs_ratio, result.params_ratio = m["latency_row"], m["macs"], m["params"]
    result.notes += best.notes
    result.table = setup.table_info
    result.verdict = _verdict(metric, value, best.met, m[metric], best.predicted, m["latency_row"], m["macs"])
    if best.notes and best.notes[-1].startswith(EMPTY):
        result.verdict += "; " + best.notes[-1]
    if verbose:
        LOG.info("\n".join(result.summary_lines()))
    return result
