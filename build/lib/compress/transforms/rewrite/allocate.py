"""Global allocation: one option per layer (e.g. a separable multiplier T) minimising total error under a MACs cap.

A multiple-choice knapsack: each layer offers options ``(macs, error)``; the sum of the chosen options' MACs must
stay within a budget while the sum of their errors (additive costs, e.g. squared relative output errors) is as
small as possible. Solved exactly by dynamic programming over the Pareto frontier of partial assignments (layer
by layer, keep only the ``(MACs, error)`` points no other point beats on both); a frontier larger than
``max_frontier`` is thinned evenly, which makes the result approximate, so caller-supplied ``seeds`` (e.g. uniform
assignments) are compared too and the allocation is never worse than any feasible seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ...errors import CompressError

__all__ = ["Option", "allocate", "total"]


@dataclass(frozen=True)
class Option:
    """One choice for one layer.

    Attributes:
        macs: per-sample MACs of the layer with this choice.
        error: its additive cost (e.g. squared relative output error).
        value: what to apply (e.g. the multiplier ``T``; ``None`` for "leave the layer as it is").
    """

    macs: int
    error: float
    value: Any = None


def total(choice: Mapping[str, Option]) -> tuple[int, float]:
    """``(MACs, error)`` summed over the layers of an assignment."""
    return sum(o.macs for o in choice.values()), sum(o.error for o in choice.values())


def allocate(options: Mapping[str, Sequence[Option]], budget: float, *,
             seeds: Sequence[Mapping[str, Option]] = (), max_frontier: int = 20_000) -> dict[str, Option]:
    """Pick one option per layer with total MACs ``<= budget`` and least total error.

    Args:
        options: layer -> its options (at least one each).
        budget: the MACs cap for the sum over these layers.
        seeds: complete assignments to compare against (infeasible ones are ignored).
        max_frontier: most partial assignments kept per layer (exact while the Pareto frontier stays smaller).

    Returns:
        Layer -> chosen option (ties: fewer MACs).

    Raises:
        CompressError: even the cheapest option of every layer exceeds ``budget``.
    """
    names = list(options)
    cheapest = sum(min(o.macs for o in options[n]) for n in names)
    if cheapest > budget:
        raise CompressError(f"the cheapest choice of every layer needs {cheapest:,} MACs, above the budget of "
                            f"{int(budget):,}")
    rest = [sum(min(o.macs for o in options[n]) for n in names[i + 1:]) for i in range(len(names))]
    frontier: list[tuple[int, float, tuple[int, ...]]] = [(0, 0.0, ())]  # (MACs, error, option index per layer)
    for name, later in zip(names, rest):
        merged = [(m + o.macs, e + o.error, picks + (i,)) for m, e, picks in frontier
                  for i, o in enumerate(options[name]) if m + o.macs + later <= budget]
        frontier = _pareto(merged)
        if len(frontier) > max_frontier:  # keep the extremes and an even spread in between
            step = len(frontier) / max_frontier
            frontier = [frontier[int(k * step)] for k in range(max_frontier - 1)] + [frontier[-1]]
    best = {n: options[n][i] for n, i in zip(names, frontier[-1][2])}
    found = [best] + [dict(seed) for seed in seeds if total(seed)[0] <= budget]
    return min(found, key=lambda c: (total(c)[1], total(c)[0]))


def _pareto(points: list[tuple[int, float, tuple[int, ...]]]) -> list[tuple[int, float, tuple[int, ...]]]:
    """The points no other point beats on both MACs and error, by increasing MACs (so decreasing error)."""
    out: list[tuple[int, float, tuple[int, ...]]] = []
    for p in sorted(points, key=lambda p: (p[0], p[1])):
        if not out or p[1] < out[-1][1]:
            out.append(p)
    return out
