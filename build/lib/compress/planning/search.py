"""The planner's closed loop: search, apply, measure; re-aim the predicted goal by the measured error.

A round's greedy search (:mod:`~compress.planning.greedy`) aims at a predicted ratio; the candidate is applied
to a copy and measured end to end against the original. A missed target re-aims lower by the observed
prediction error (:func:`aim`), a target beaten by far re-aims higher to give accuracy back, and once rounds
lie either side of the target the next goal is a secant step between them (:func:`bracketed`). The round
returned is the cheapest (in predicted accuracy cost) that met the target, else the one measured fastest; for a
latency target, when no round was measured faster than the original, the plan is empty (:func:`unchanged`).
"""
from __future__ import annotations

import logging

import copy
from dataclasses import dataclass
from typing import Any

from torch import nn

from .greedy import Move, greedy
from .predict import State, site_widths, total
from .problem import Problem
from .result import Iteration, LayerChoice, Plan
from .runner import Runner
from .setup import Setup, Space

__all__ = ["Round", "search", "layer_choices", "aim", "next_goal", "bracketed", "better", "unchanged", "EMPTY"]

LOG = logging.getLogger(__name__)


def layer_choices(problem: Problem, state: State, moves: list[Move], unit: str) -> list[LayerChoice]:
    """Pruning choices (group order), dropped blocks, then rewrites (module order), with the savings credited in
    the search. A group whose convs all lie in dropped blocks is not pruned (its channels go with the blocks)."""
    saved: dict[Any, float] = {}
    for m in moves:
        key = ("group", m.group) if m.group is not None else ("block", m.block) if m.block else ("site", m.site)
        saved[key] = saved.get(key, 0.0) + m.saving
    out = []
    for gid, g in enumerate(problem.groups):
        w = state.widths[gid]
        if w < g.width and any(state.runs(problem.sites[n]) for n in problem.group_sites(gid)):
            out.append(LayerChoice(g.group.root, "prune", g.width, w, g.group.convs, g.removed(w), {},
                                   saved[("group", gid)], unit, g.cost_to(w)))
    for name in sorted(state.dropped, key=list(problem.blocks).index):
        block = problem.blocks[name]
        out.append(LayerChoice(name, "drop", block.in_shape[0], block.in_shape[0], block.convs, [], {},
                               saved[("block", name)], unit, block.cost))
    for name, site in problem.sites.items():
        form = state.forms.get(name)
        if form is not None:
            a, b = site_widths(site, state)
            out.append(LayerChoice(name, form.kind, site.shape.out_channels, a, [name], [], form.params(b),
                                   saved[("site", name)], unit, site.form_costs[form.key]))
    return out


@dataclass
class Round:
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


def better(new: Round, old: Round | None, metric: str) -> bool:
    """Met beats not met; among met rounds the cheaper in accuracy wins; otherwise the one measured lower."""
    if old is None or new.met != old.met:
        return old is None or new.met
    return new.cost < old.cost if new.met else new.measured[metric] < old.measured[metric]


def aim(predicted: float, measured: float, value: float) -> float:
    """The predicted ratio expected to measure ``value``, from one round (``predicted`` -> ``measured``).

    Model: ``measured = 1 - alpha * (1 - predicted)``, ``alpha`` being how much of the predicted saving shows
    up end to end (a fixed overhead or an unabsorbed permute makes it < 1). Without a usable saving on either
    side the error is taken as a factor instead.
    """
    if predicted < 1.0 - 1e-9 and measured < 1.0 - 1e-9:
        alpha = (1.0 - measured) / (1.0 - predicted)
        return 1.0 - (1.0 - value) / alpha
    return predicted * value / measured


def next_goal(predicted: float, measured: float, value: float, tolerance: float, decrement: float,
               exhausted: bool) -> float | None:
    """The next round's predicted goal, or ``None`` to stop.

    Missed: aim lower (:func:`aim`), always asking for at least half a step more than this round delivered.
    Met far below the target: aim higher the same way, to give back accuracy.
    """
    if measured > value + tolerance:
        if exhausted:
            return None  # the search ran out of moves: a tighter goal cannot help
        # a goal below zero means "as far as the search can go": it stops at its limits (min_keep, forms)
        return max(min(aim(predicted, measured, value), predicted - decrement / 2), 1e-6)
    if measured >= value - 2 * tolerance:
        return None  # met, close to the target
    new = aim(predicted, measured, value)
    return new if new > predicted + decrement / 2 else None


def bracketed(rounds: list[Iteration], value: float, goal: float) -> float:
    """Once one round met the target and another missed it, aim between them (a secant step in predicted ratio
    through the met round measured highest and the missed one measured lowest); else keep ``goal``.

    One round's error model (:func:`aim`) can overshoot both ways in turn; two rounds either side of the target
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


def search(space: Space, setup: Setup, runner: Runner, result: Plan, *, max_iters: int, decrement: float,
            verbose: bool) -> Round:
    """The closed loop: search, apply, measure; re-aim the predicted goal by the measured error (bounded).

    When a round misses and the goal the measurement calls for lies beyond the deepest plan of the current
    candidate widths, ``min_keep`` is halved (down to its limit) and the loop goes on with the wider grid.
    """
    metric, value = next(iter(result.target.items()))
    best: Round | None = None
    goal, seen = value, set()
    for index in range(max_iters):
        state, moves = greedy(space.problem, space.resource, other=space.other, target=goal * space.start,
                              decrement=decrement * space.start, verbose=verbose)
        predicted = (space.other + total(space.problem, space.resource, state)) / space.start
        choices = layer_choices(space.problem, state, moves, space.resource.unit)
        key = repr([(c.layer, c.form, c.width_to, c.params) for c in choices])
        if key in seen:
            break  # the re-aimed goal led to a plan already measured
        seen.add(key)
        candidate, notes = runner.build(choices)
        m = runner.measure(candidate, latency=metric == "latency")
        met = m[metric] <= value + result.tolerance
        result.iterations.append(Iteration(index + 1, goal, predicted, m[metric], met, len(choices)))
        if verbose:
            LOG.info(f"plan round {index + 1}: predicted {predicted:.3f}x, measured {m[metric]:.3f}x of the original "
                     f"{metric} (target {value:g}x){' - met' if met else ''}")
        found = Round(met, choices, predicted, m, candidate, notes)
        best = found if better(found, best, metric) else best
        exhausted = predicted > goal + 1e-9 or not moves
        if metric == "latency" and not met and index + 1 < max_iters:
            wanted = next_goal(predicted, m[metric], value, result.tolerance, decrement, exhausted=False)
            if wanted is not None and (exhausted or wanted < space.deepest()[0]):
                wider = setup.deeper(runner)
                if wider is not None:
                    setup.notes.append(f"round {index + 1} measured {m[metric]:.3f}x: the goal it calls for "
                                       f"({wanted:.3f}x predicted) is past the deepest plan; min_keep halved to "
                                       f"{setup.min_keep:g}")
                    space, goal = wider, wanted
                    continue
        goal = next_goal(predicted, m[metric], value, result.tolerance, decrement, exhausted=exhausted)
        if goal is None:
            break
        goal = bracketed(result.iterations, value, goal)
    if metric == "latency" and best.choices and best.measured["latency"] >= 1.0:
        return unchanged(runner, best)
    return best


EMPTY = "no planned model"


def unchanged(runner: Runner, slowest: Round) -> Round:
    """The empty plan, when no round was measured faster than the original: never emit a slower model."""
    note = (f"{EMPTY} was measured faster than the original (the best round measured "
            f"{slowest.measured['latency']:.3f}x of its latency): the plan is left EMPTY, the model unchanged")
    measured = {"latency": 1.0, "macs": 1.0, "params": 1.0, "latency_row": None}
    return Round(False, [], 1.0, measured, copy.deepcopy(runner.model), [note])
