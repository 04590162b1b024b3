"""``plan``: choose per-layer widths and rewrites that meet a latency / MACs / parameter target on a device.

Users ask for "2x faster on my device", not "50% fewer MACs", and fewer MACs is not less time: a depthwise or
shuffled layer can lose to the dense conv it replaces on a GPU, and a width off the kernel's tile size can be
slower than a wider one. So the plan is made against measured latency (NetAdapt, Yang et al. 2018; HALP,
Shen et al. 2022):

1. trace the model (shapes, torch-pruning channel groups), price each candidate's accuracy cost
   (:mod:`~compress.planning.costs`) and, for a latency target, measure every candidate's time on the device
   (:mod:`~compress.planning.table`, cached) and the original's end-to-end time: what the convs' table times do
   not add up to (activations, adds, pooling, per-op dispatch: at batch 1 a large share) is taken as a fixed
   part of the predicted time (a pessimistic reading at large batches, where activations and adds shrink with
   the channels: the measured rounds correct it). When even the deepest plan the search can find cannot reach
   the target, the smallest kept fraction of each group (``min_keep``) is halved, down to ``min_keep_limit``;
2. greedily shrink the predicted latency (:mod:`~compress.planning.greedy`);
3. apply the plan to a copy and measure it end to end against the original in one interleaved run; if the
   target is missed, re-aim the predicted target by the observed prediction error and repeat (bounded); if
   it is beaten by far, re-aim the other way to give accuracy back. The round returned is the cheapest (in
   predicted accuracy cost) that met the target, else the one measured fastest; for a latency target, when no
   round was measured faster than the original, the plan is empty (the model is left as it is) and says so.

Latency is measured, by default, on models in deploy form, their BatchNorms folded into the convs
(:func:`~compress.transforms.fold_bn.fold_batchnorm`): the original and every candidate alike, and the table's
convs carry the bias the fold gives them.

The returned :class:`~compress.planning.result.Plan` holds the choices, predicted and measured ratios and a
verdict that says so loudly when the planned model is slower than the original.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any, Iterable

import torch
from torch import nn

from ..errors import CompressError
from ..measurement import compare_latency, cost
from ..measurement.timing import as_dtype, dtype_name, resolve_device
from .apply import apply_choices
from .candidates import check_forms, default_align
from .greedy import Move, greedy
from .predict import LatencyResource, MacsResource, ParamsResource, Resource, State, site_widths, total
from .problem import Problem, build_problem
from .result import Iteration, LayerChoice, Plan
from .table import build_table

__all__ = ["plan", "check_target", "DEFAULT_FORMS", "TARGETS"]

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


def _choices(problem: Problem, state: State, moves: list[Move], unit: str) -> list[LayerChoice]:
    """Pruning choices (group order) then rewrites (module order), with the savings credited in the search."""
    saved: dict[Any, float] = {}
    for m in moves:
        key = ("group", m.group) if m.group is not None else ("site", m.site)
        saved[key] = saved.get(key, 0.0) + m.saving
    out = []
    for gid, g in enumerate(problem.groups):
        w = state.widths[gid]
        if w < g.width:
            out.append(LayerChoice(g.group.root, "prune", g.width, w, g.group.convs, g.removed(w), {},
                                   saved[("group", gid)], unit, g.cost_to(w)))
    for name, site in problem.sites.items():
        form = state.forms.get(name)
        if form is not None:
            a, b = site_widths(site, state)
            out.append(LayerChoice(name, form.kind, site.shape.out_channels, a, [name], [], form.params(b),
                                   saved[("site", name)], unit, site.form_costs[form.key]))
    return out


class _Runner:
    """Applies choices to a copy of the model and measures it against the original."""

    def __init__(self, model: nn.Module, x: torch.Tensor, *, device: torch.device, batch: int,
                 dtype: torch.dtype, channels_last: bool, runs: int, fold_bn: bool, verbose: bool) -> None:
        self.model, self.x, self.batch = model, x, batch
        self.settings = dict(device=device, batch_sizes=(batch,), dtype=dtype, channels_last=channels_last,
                             runs=runs, fold_bn=fold_bn, verbose=verbose)
        self.base = cost(model, x)

    def original_ms(self) -> float:
        """The original's fastest end-to-end time (ms; the table keeps fastest times too)."""
        comp = compare_latency({"original": self.model}, self.x, **self.settings)
        return comp.results["original"].stats[self.batch].min_ms

    def build(self, choices: list[LayerChoice]) -> tuple[nn.Module, list[str]]:
        candidate = copy.deepcopy(self.model)
        notes = apply_choices(candidate, choices, self.x)
        return candidate, notes

    def measure(self, candidate: nn.Module, *, latency: bool) -> dict[str, Any]:
        c = cost(candidate, self.x)
        out: dict[str, Any] = {"macs": c.macs / self.base.macs, "params": c.params / self.base.params,
                               "latency_row": None}
        if latency:
            row = compare_latency({"original": self.model, "planned": candidate}, self.x, **self.settings).rows()[0]
            out["latency_row"] = row
            out["latency"] = row["compressed_ms"] / row["baseline_ms"]
        return out


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


def _analysis(model: nn.Module, analysis: Any, calib: Iterable | None, calib_batches: int, verbose: bool) -> Any:
    if analysis is not None or calib is None:
        return analysis
    from ..analysis import analyze

    return analyze(model, islice(calib, calib_batches), verbose=verbose)


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
        calib: batches (``(images, labels)`` or images) to analyse the model with when ``analysis`` is ``None``;
            with neither, costs come from weight magnitudes.
        forms: allowed changes, a subset of ``prune``, ``grouped``, ``separable``, ``shuffle``, ``bottleneck``.
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
        calib_batches: batches of ``calib`` analysed.
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
    analysis = _analysis(model, analysis, calib, calib_batches, verbose)
    runner = _Runner(model, x, device=device, batch=batch, dtype=dtype, channels_last=channels_last, runs=runs,
                     fold_bn=fold_bn, verbose=verbose)
    setup = _Setup(model, x, metric, forms=forms, align=align, max_widths=max_widths, analysis=analysis,
                   device=device, batch=batch, dtype=dtype, channels_last=channels_last, cache_dir=cache_dir,
                   table_runs=table_runs, fold_bn=fold_bn, verbose=verbose)
    space = setup.reaching(runner, value, min_keep, min_keep_limit)
    result = Plan(target={metric: value}, device=str(device), dtype=dtype_name(dtype), batch=batch,
                  channels_last=channels_last, align=align, tolerance=tolerance, notes=list(space.problem.notes))
    best = _search(space, setup, runner, result, max_iters=max_iters, decrement=decrement, verbose=verbose)
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
    if best.notes and best.notes[-1].startswith(_EMPTY):
        result.verdict += "; " + best.notes[-1]
    if verbose:
        print("\n".join(result.summary_lines()), flush=True)
    return result


def _folded_convs(model: nn.Module, x: torch.Tensor) -> set[str]:
    """Convs that carry a bias once the model's BatchNorms are folded (fx keeps the module names)."""
    from ..transforms.fold_bn import fold_batchnorm

    return {n for n, m in fold_batchnorm(model, example_inputs=x).named_modules()
            if isinstance(m, nn.Conv2d) and m.bias is not None}


class _Setup:
    """Builds the problem, the resource and the fixed part of the prediction at a given ``min_keep``."""

    def __init__(self, model: nn.Module, x: torch.Tensor, metric: str, *, forms: tuple[str, ...], align: int,
                 max_widths: int, analysis: Any, device: torch.device, batch: int, dtype: torch.dtype,
                 channels_last: bool, cache_dir: str | None, table_runs: int | None, fold_bn: bool,
                 verbose: bool) -> None:
        self.model, self.x, self.metric, self.verbose = model, x, metric, verbose
        self.problem_options = dict(kinds=forms, align=align, max_widths=max_widths, analysis=analysis)
        self.table_options = dict(device=device, batch=batch, dtype=dtype, channels_last=channels_last,
                                  cache_dir=cache_dir, runs=table_runs, verbose=verbose)
        self.biased = _folded_convs(model, x) if fold_bn and metric == "latency" else set()
        self.tables: list[Any] = []
        self.original_ms: float | None = None
        self.min_keep, self.limit = 1.0, 1.0
        self.notes: list[str] = []

    @property
    def table_info(self) -> dict[str, Any] | None:
        """The latency table's cache file and key, and entries measured (all builds, on demand too) / reused."""
        if not self.tables:
            return None
        table = self.tables[-1]
        return {"path": str(table.path) if table.path else None, "measured": sum(t.measured for t in self.tables),
                "reused": table.reused, **table.key.as_dict()}

    def build(self, runner: _Runner, min_keep: float) -> tuple[Problem, Resource, float, float]:
        problem = build_problem(self.model, self.x, min_keep=min_keep, verbose=self.verbose, **self.problem_options)
        for name, site in problem.sites.items():
            if name in self.biased:  # deploy form: the folded BatchNorm's shift is this conv's bias
                site.shape = replace(site.shape, bias=True)
        if self.metric == "macs":
            resource: Resource = MacsResource()
        elif self.metric == "params":
            resource = ParamsResource()
        else:
            table = build_table(problem.requests(), **self.table_options)
            self.tables.append(table)
            resource = LatencyResource(table)
        other, base = _calibrate(problem, resource, runner, self.model, self.metric, self, self.verbose)
        return problem, resource, other, base

    def reaching(self, runner: _Runner, value: float, min_keep: float, limit: float) -> _Space:
        """The problem at the largest ``min_keep`` (halved from ``min_keep`` down to ``limit``) whose deepest plan
        could reach ``value`` even on the most favourable reading of the prediction: the unplanned time shrinking
        with the convs (at batch 64 activations and adds do). Whether the fixed reading holds is for the measured
        rounds to show (:func:`_search` halves ``min_keep`` on that evidence). MACs and parameter targets keep
        ``min_keep``."""
        self.min_keep, self.limit = min_keep, limit
        space = _Space(*self.build(runner, min_keep))
        while self.metric == "latency":
            fixed, scaled = space.deepest()
            if scaled <= value or self.min_keep / 2 < limit:
                self.notes.append(f"deepest plan with min_keep {self.min_keep:g} predicted at {fixed:.3f}x of the "
                                  f"original latency ({scaled:.3f}x if the unplanned time shrank with the convs)")
                break
            self.notes.append(f"min_keep {self.min_keep:g}: even the deepest plan is predicted at {scaled:.3f}x; "
                              f"halved")
            space = self.deeper(runner)
        return space

    def deeper(self, runner: _Runner) -> _Space | None:
        """The problem with ``min_keep`` halved, or ``None`` when that would pass ``min_keep_limit``."""
        if self.min_keep / 2 < self.limit:
            return None
        self.min_keep /= 2
        return _Space(*self.build(runner, self.min_keep))


@dataclass
class _Space:
    """What one search runs on: the problem, its resource, the fixed part and the convs' full total."""

    problem: Problem
    resource: Resource
    other: float
    base: float

    @property
    def start(self) -> float:
        return self.other + self.base

    def deepest(self) -> tuple[float, float]:
        """Predicted ratios of the deepest plan the greedy search finds (target 0): ``(with the unplanned time
        fixed, with it shrinking in proportion to the convs)``."""
        state, _ = greedy(self.problem, self.resource, other=self.other, target=0.0, decrement=0.05 * self.start)
        convs = total(self.problem, self.resource, state) / self.base
        return (self.other + convs * self.base) / self.start, convs


def _calibrate(problem: Problem, resource: Resource, runner: _Runner, model: nn.Module, metric: str,
               setup: _Setup, verbose: bool) -> tuple[float, float]:
    """Price the rewrites worth pricing; return ``(other, base)``: the unplanned part and the sites' total."""
    full = State.initial(problem)
    # a rewrite slower than its dense conv (measured) or without savings is dropped before it is priced
    problem.price(model, lambda site, form: resource.conv(site, *site_widths(site, full), form)
                  < resource.conv(site, *site_widths(site, full), None), verbose=verbose)
    base = total(problem, resource, full)
    if metric == "latency":
        # what the convs' table times leave of the original's measured time (activations, adds, pooling, the
        # classifier, per-op dispatch: at batch 1 a large share) is taken as fixed; the measured rounds then fit
        # how much of the predicted saving really shows (see _aim)
        if setup.original_ms is None:
            setup.original_ms = runner.original_ms()
        return max(0.0, setup.original_ms - base), base
    whole = runner.base.macs if metric == "macs" else runner.base.params
    return max(0.0, whole - base), base  # what no conv accounts for: BN, activations, the classifier...


@dataclass
class _Round:
    """One round's outcome: the choices, the candidate model and what was predicted and measured."""

    met: bool
    choices: list[LayerChoice]
    predicted: float
    measured: dict[str, Any]
    model: nn.Module
    notes: list[str]

    @property
    def cost(self) -> float:
        return sum(c.cost for c in self.choices)


def _better(new: _Round, old: _Round | None, metric: str) -> bool:
    """Met beats not met; among met rounds the cheaper in accuracy wins; otherwise the one measured lower."""
    if old is None or new.met != old.met:
        return old is None or new.met
    return new.cost < old.cost if new.met else new.measured[metric] < old.measured[metric]


def _aim(predicted: float, measured: float, value: float) -> float:
    """The predicted ratio expected to measure ``value``, from one round (``predicted`` -> ``measured``).

    Model: ``measured = 1 - alpha * (1 - predicted)``, ``alpha`` being how much of the predicted saving shows
    up end to end (a fixed overhead or an unabsorbed permute makes it < 1). Without a usable saving on either
    side the error is taken as a factor instead.
    """
    if predicted < 1.0 - 1e-9 and measured < 1.0 - 1e-9:
        alpha = (1.0 - measured) / (1.0 - predicted)
        return 1.0 - (1.0 - value) / alpha
    return predicted * value / measured


def _next_goal(predicted: float, measured: float, value: float, tolerance: float, decrement: float,
               exhausted: bool) -> float | None:
    """The next round's predicted goal, or ``None`` to stop.

    Missed: aim lower (:func:`_aim`), always asking for at least half a step more than this round delivered.
    Met far below the target: aim higher the same way, to give back accuracy.
    """
    if measured > value + tolerance:
        if exhausted:
            return None  # the search ran out of moves: a tighter goal cannot help
        # a goal below zero means "as far as the search can go": it stops at its limits (min_keep, forms)
        return max(min(_aim(predicted, measured, value), predicted - decrement / 2), 1e-6)
    if measured >= value - 2 * tolerance:
        return None  # met, close to the target
    new = _aim(predicted, measured, value)
    return new if new > predicted + decrement / 2 else None


def _bracketed(rounds: list[Iteration], value: float, goal: float) -> float:
    """Once one round met the target and another missed it, aim between them (a secant step in predicted ratio
    through the met round measured highest and the missed one measured lowest); else keep ``goal``.

    One round's error model (:func:`_aim`) can overshoot both ways in turn; two rounds either side of the target
    pin it down better."""
    met = [r for r in rounds if r.met]
    missed = [r for r in rounds if not r.met]
    if not met or not missed:
        return goal
    hi, lo = max(met, key=lambda r: r.measured_ratio), min(missed, key=lambda r: r.measured_ratio)
    if lo.measured_ratio <= hi.measured_ratio:
        return goal  # cannot happen with a fixed tolerance; guards the division
    slope = (lo.predicted_ratio - hi.predicted_ratio) / (lo.measured_ratio - hi.measured_ratio)
    return hi.predicted_ratio + (value - hi.measured_ratio) * slope


def _search(space: _Space, setup: _Setup, runner: _Runner, result: Plan, *, max_iters: int, decrement: float,
            verbose: bool) -> _Round:
    """The closed loop: search, apply, measure; re-aim the predicted goal by the measured error (bounded).

    When a round misses and the goal the measurement calls for lies beyond the deepest plan of the current
    candidate widths, ``min_keep`` is halved (down to its limit) and the loop goes on with the wider grid.
    """
    metric, value = next(iter(result.target.items()))
    best: _Round | None = None
    goal, seen = value, set()
    for index in range(max_iters):
        state, moves = greedy(space.problem, space.resource, other=space.other, target=goal * space.start,
                              decrement=decrement * space.start, verbose=verbose)
        predicted = (space.other + total(space.problem, space.resource, state)) / space.start
        choices = _choices(space.problem, state, moves, space.resource.unit)
        key = repr([(c.layer, c.form, c.width_to, c.params) for c in choices])
        if key in seen:
            break  # the re-aimed goal led to a plan already measured
        seen.add(key)
        candidate, notes = runner.build(choices)
        m = runner.measure(candidate, latency=metric == "latency")
        met = m[metric] <= value + result.tolerance
        result.iterations.append(Iteration(index + 1, goal, predicted, m[metric], met, len(choices)))
        if verbose:
            print(f"plan round {index + 1}: predicted {predicted:.3f}x, measured {m[metric]:.3f}x of the original "
                  f"{metric} (target {value:g}x){' - met' if met else ''}", flush=True)
        found = _Round(met, choices, predicted, m, candidate, notes)
        best = found if _better(found, best, metric) else best
        exhausted = predicted > goal + 1e-9 or not moves
        if metric == "latency" and not met and index + 1 < max_iters:
            wanted = _next_goal(predicted, m[metric], value, result.tolerance, decrement, exhausted=False)
            if wanted is not None and (exhausted or wanted < space.deepest()[0]):
                wider = setup.deeper(runner)
                if wider is not None:
                    setup.notes.append(f"round {index + 1} measured {m[metric]:.3f}x: the goal it calls for "
                                       f"({wanted:.3f}x predicted) is past the deepest plan; min_keep halved to "
                                       f"{setup.min_keep:g}")
                    space, goal = wider, wanted
                    continue
        goal = _next_goal(predicted, m[metric], value, result.tolerance, decrement, exhausted=exhausted)
        if goal is None:
            break
        goal = _bracketed(result.iterations, value, goal)
    if metric == "latency" and best.choices and best.measured["latency"] >= 1.0:
        return _unchanged(runner, best)
    return best


_EMPTY = "no planned model"


def _unchanged(runner: _Runner, slowest: _Round) -> _Round:
    """The empty plan, when no round was measured faster than the original: never emit a slower model."""
    note = (f"{_EMPTY} was measured faster than the original (the best round measured "
            f"{slowest.measured['latency']:.3f}x of its latency): the plan is left EMPTY, the model unchanged")
    measured = {"latency": 1.0, "macs": 1.0, "params": 1.0, "latency_row": None}
    return _Round(False, [], 1.0, measured, copy.deepcopy(runner.model), [note])
