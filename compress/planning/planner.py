"""``plan``: choose per-layer widths, rewrites and dropped blocks that meet a latency / MACs / parameter target
on a device, in the runtime the model ships to.

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

Latency is measured in ``options.runtime`` (:mod:`compress.measurement.runtimes`): eager PyTorch by default, or
e.g. ONNX Runtime, whose blocked kernels make another width staircase than eager's; the table's candidates are
then sessions of that runtime and the closed loop times whole models in it. It is measured, by default, on models
in deploy form, their BatchNorms folded into the convs (:func:`~compress.transforms.blocks.fold_bn.fold_batchnorm`;
always in runtimes other than ``torch``): the original and every candidate alike, and the table's convs carry the
bias the fold gives them.

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
from .candidates import default_align
from .options import DEFAULT_FORMS, TARGETS, PlanOptions
from .result import Plan
from .runner import Runner
from .search import EMPTY, search
from .setup import Setup

__all__ = ["plan", "PlanOptions", "DEFAULT_FORMS", "TARGETS"]

LOG = logging.getLogger(__name__)


def _verdict(metric: str, value: float, met: bool, measured: float, predicted: float, row: dict | None,
             macs_ratio: float) -> str:
    status = "met" if met else "NOT MET"
    text = (f"{metric} target {value:g}x: {status} (measured {measured:.3f}x of the original, predicted "
            f"{predicted:.3f}x; MACs {macs_ratio:.3f}x)")
    if row is None:
        return text + "; latency not measured"
    folded = ", BN folded in both models" if row.get("bn_folded") else ""
    layout = " channels_last" if row["channels_last"] else ""
    return (f"{text}; latency {row['baseline_ms']:.3f} ms -> {row['compressed_ms']:.3f} ms at batch {row['batch']} "
            f"{row['dtype']}{layout}{folded} in {row.get('runtime', 'torch')} on {row['device']}: {row['verdict']}")


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


def plan(model: nn.Module, example_inputs: torch.Tensor, options: PlanOptions, *, analysis: Any = None,
         calib: Iterable | None = None, verbose: bool = True) -> Plan:
    """Plan pruning widths and rewrites of ``model`` that meet ``options.target`` at least predicted accuracy cost.

    The model is never modified (candidates are applied to deep copies); apply the result with
    :func:`~compress.planning.apply.apply_plan`.

    Args:
        model: the trained network.
        example_inputs: ``(1, C, H, W)`` on the model's device (its first sample is repeated to ``options.batch``).
        options: target, device, batch, dtype, runtime, forms, ... (:class:`~compress.planning.options.PlanOptions`).
        analysis: an :class:`~compress.analysis.Analysis` of ``model`` (channel statistics, dead channels,
            correlations) for accuracy costs.
        calib: batches (``(images (B, C, H, W), labels (B,))`` or images) to analyse the model with when
            ``analysis`` is ``None`` (with neither, costs come from weight magnitudes), to price dropping residual
            blocks (``drop`` needs them: without, no block is dropped) and to price and build separable rewrites
            data-aware (pass the same batches to :func:`~compress.planning.apply.apply_plan`); the first
            ``options.calib_batches`` are used.
        verbose: progress bars and one line per round.

    Returns:
        A :class:`~compress.planning.result.Plan`.

    Raises:
        CompressError: the runtime cannot run on ``options.device`` in ``options.dtype`` here, CUDA is missing.
    """
    from ..measurement.runtimes import runtime

    if not isinstance(options, PlanOptions):
        raise CompressError(f"plan: expected PlanOptions, got {type(options).__name__} (build one with "
                            f"PlanOptions(target={{'latency': 0.5}}, ...))")
    device, dtype = resolve_device(options.device, what="plan device"), as_dtype(options.dtype)
    reason = runtime(options.runtime).unsupported(device=device, dtype=dtype) if options.metric == "latency" \
        or options.measure_latency else None
    if reason is not None:
        raise CompressError(f"plan runtime {options.runtime!r} cannot run here: {reason}")
    metric, value = options.metric, options.value
    options = options.replace(align=options.align or default_align(str(device), dtype))
    x = example_inputs[:1]
    batches = list(islice(calib, options.calib_batches)) if calib is not None else []  # read once: used twice
    analysis = _analysis(model, analysis, batches, verbose)
    drop_errors = _drop_errors(model, batches, verbose) if "drop" in options.forms else None
    runner = Runner(model, x, options, calib=batches or None, verbose=verbose)
    setup = Setup(model, x, options, analysis=analysis, drop_errors=drop_errors, verbose=verbose)
    space = setup.reaching(runner, value, options.min_keep, options.min_keep_limit)
    result = Plan(target={metric: value}, device=str(device), dtype=dtype_name(dtype), batch=options.batch,
                  channels_last=options.channels_last, align=options.align, runtime=options.runtime,
                  tolerance=options.tolerance, notes=list(space.problem.notes))
    best = search(space, setup, runner, result, max_iters=options.max_iters, decrement=options.decrement,
                  verbose=verbose)
    if metric == "latency":
        folded = "of BN-folded models (deploy form) " if options.fold_bn else ""
        result.notes.insert(0, f"latency {folded}in runtime {options.runtime} on both sides; fixed part of the "
                               f"predicted time (not in the conv table): {space.other:.4g} ms of {space.start:.4g} ms")
    result.notes[1:1] = setup.notes
    if metric != "latency" and options.measure_latency:
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
