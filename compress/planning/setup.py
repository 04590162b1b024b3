"""What one search of the planner runs on, at a given ``min_keep``: the problem, its resource (latency table,
MACs or parameters) and the fixed part of the prediction (what the convs' table times leave of the original's
measured time).

When even the deepest plan the search can find cannot reach a latency target, :meth:`Setup.reaching` halves
the smallest kept fraction of each group (``min_keep``), down to ``min_keep_limit``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from .blocks import block_whole, overhead
from ..env import resolve_device
from .greedy import greedy
from .options import PlanOptions
from .predict import (LatencyResource, MacsResource, ParamsResource, Resource, State, dropped_overhead, site_widths,
                      total)
from .problem import Problem, build_problem
from .runner import Runner
from .table import Conditions, build_table

__all__ = ["Setup", "Space", "calibrate", "folded_convs"]


def folded_convs(model: nn.Module, x: torch.Tensor) -> set[str]:
    """Convs that carry a bias once the model's BatchNorms are folded (fx keeps the module names)."""
    from ..transforms.blocks.fold_bn import fold_batchnorm

    return {n for n, m in fold_batchnorm(model, example_inputs=x).named_modules()
            if isinstance(m, nn.Conv2d) and m.bias is not None}


class Setup:
    """Builds the problem, the resource and the fixed part of the prediction at a given ``min_keep``."""

    def __init__(self, model: nn.Module, x: torch.Tensor, options: PlanOptions, *, analysis: Any,
                 drop_errors: dict[str, float] | None = None, verbose: bool) -> None:
        self.model, self.x, self.options, self.verbose = model, x, options, verbose
        self.metric = options.metric
        self.problem_options = dict(kinds=options.forms, align=options.align, max_widths=options.max_widths,
                                    analysis=analysis, drop_errors=drop_errors)
        self.timing = Conditions(device=resolve_device(options.device), batch=options.batch, dtype=options.dtype,
                                 channels_last=options.channels_last, runtime=options.runtime)
        self.block_whole: dict[str, float] | None = None
        self.biased = folded_convs(model, x) if options.fold_bn and self.metric == "latency" else set()
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

    def build(self, runner: Runner, min_keep: float) -> tuple[Problem, Resource, float, float]:
        problem = build_problem(self.model, self.x, min_keep=min_keep, verbose=self.verbose, **self.problem_options)
        for name, site in problem.sites.items():
            if name in self.biased:  # deploy form: the folded BatchNorm's shift is this conv's bias
                site.shape = replace(site.shape, bias=True)
        if self.metric == "macs":
            resource: Resource = MacsResource()
        elif self.metric == "params":
            resource = ParamsResource()
        else:
            table = build_table(problem.requests(), self.timing, cache_dir=self.options.cache_dir,
                                runs=self.options.table_runs, verbose=self.verbose)
            self.tables.append(table)
            resource = LatencyResource(table)
        self._block_overheads(problem, resource)
        other, base = calibrate(problem, resource, runner, self.model, self.metric, self, self.verbose)
        return problem, resource, other, base

    def _block_overheads(self, problem: Problem, resource: Resource) -> None:
        """Set each droppable block's overhead: its whole cost at full width beyond its convs' entries."""
        if not problem.blocks:
            return
        if self.block_whole is None:  # full-width blocks: the same at every min_keep
            self.block_whole = block_whole(self.model, problem.blocks, resource.unit, self.timing,
                                           fold_bn=self.options.fold_bn)
            self.notes.append("droppable blocks (drop cost, whole " + resource.unit + "): " + ", ".join(
                f"{n} ({b.cost:.3g}, {self.block_whole[n]:.4g})" for n, b in problem.blocks.items()))
        full = State.initial(problem)
        for name, block in problem.blocks.items():
            convs = sum(resource.conv(problem.sites[n], *site_widths(problem.sites[n], full), None)
                        for n in block.convs)
            block.overhead[resource.unit] = overhead(self.block_whole[name], convs)

    def reaching(self, runner: Runner, value: float, min_keep: float, limit: float) -> Space:
        """The problem at the largest ``min_keep`` (halved from ``min_keep`` down to ``limit``) whose deepest plan
        could reach ``value`` even on the most favourable reading of the prediction: the unplanned time shrinking
        with the convs (at batch 64 activations and adds do). Whether the fixed reading holds is for the measured
        rounds to show (:func:`search` halves ``min_keep`` on that evidence). MACs and parameter targets keep
        ``min_keep``."""
        self.min_keep, self.limit = min_keep, limit
        space = Space(*self.build(runner, min_keep))
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

    def deeper(self, runner: Runner) -> Space | None:
        """The problem with ``min_keep`` halved, or ``None`` when that would pass ``min_keep_limit``."""
        if self.min_keep / 2 < self.limit:
            return None
        self.min_keep /= 2
        return Space(*self.build(runner, self.min_keep))


@dataclass
class Space:
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
        planned = total(self.problem, self.resource, state)  # convs left, less the overheads of dropped blocks
        dropped = dropped_overhead(self.problem, self.resource, state)
        convs = (planned + dropped) / self.base  # the convs' share alone
        # the scaled reading: what is left of the unplanned part (dropped blocks' overheads gone) shrinks too
        return (self.other + planned) / self.start, (convs * (self.other - dropped) + planned + dropped) / self.start


def calibrate(problem: Problem, resource: Resource, runner: Runner, model: nn.Module, metric: str,
              setup: Setup, verbose: bool) -> tuple[float, float]:
    """Price the rewrites worth pricing; return ``(other, base)``: the unplanned part and the sites' total."""
    full = State.initial(problem)
    # a rewrite slower than its dense conv (measured) or without savings is dropped before it is priced
    problem.price(model, lambda site, form: resource.conv(site, *site_widths(site, full), form)
                  < resource.conv(site, *site_widths(site, full), None), calib=runner.calib, verbose=verbose)
    base = total(problem, resource, full)
    if metric == "latency":
        # what the convs' table times leave of the original's measured time (activations, adds, pooling, the
        # classifier, per-op dispatch: at batch 1 a large share) is taken as fixed; the measured rounds then fit
        # how much of the predicted saving really shows (see aim)
        if setup.original_ms is None:
            setup.original_ms = runner.original_ms()
        return max(0.0, setup.original_ms - base), base
    whole = runner.base.macs if metric == "macs" else runner.base.params
    return max(0.0, whole - base), base  # what no conv accounts for: BN, activations, the classifier...
