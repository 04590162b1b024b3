"""Predicted cost of a planning state: latency from the measured table, or MACs / parameters by formula.

A state is the width of every prunable group plus the rewrite chosen for each conv. A dense conv's predicted
time at output width ``a`` and input width ``b`` combines its measured staircases along each axis,
``t(a, b) = t_out(a) * t_in(b) / t_full`` (each factor measured; only their product is a model). A rewrite at
pruned widths is predicted as that dense time times the rewrite/dense ratio measured at exactly those widths
(:meth:`~compress.planning.table.LatencyTable.entry_ms`, cached): grouped and depthwise kernels do not scale
down like the wide ones (at a few channels on CPU they can lose to the dense conv). The end-to-end measurement
in the planner corrects what this misses.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .candidates import Form
from .problem import Problem, Site
from .shapes import ConvShape
from .table import LatencyTable

__all__ = ["State", "Resource", "LatencyResource", "MacsResource", "ParamsResource", "site_widths", "total",
           "dropped_overhead"]


@dataclass
class State:
    """Group widths (by group index), chosen rewrites (by conv name) and dropped blocks (by block name)."""

    widths: list[int]
    forms: dict[str, Form] = field(default_factory=dict)
    dropped: set[str] = field(default_factory=set)

    @classmethod
    def initial(cls, problem: Problem) -> "State":
        return cls([g.width for g in problem.groups])

    def copy(self) -> "State":
        return State(list(self.widths), dict(self.forms), set(self.dropped))

    def drop(self, problem: Problem, block: str) -> None:
        """Drop ``block``: its convs stop counting and lose any rewrite chosen for them."""
        self.dropped.add(block)
        for name in problem.blocks[block].convs:
            self.forms.pop(name, None)

    def runs(self, site: Site) -> bool:
        """Whether ``site`` still runs (its block, if any, is not dropped)."""
        return site.block is None or site.block not in self.dropped


class Resource(Protocol):
    """What a target constrains: ``unit`` and the cost of one conv at given widths and form."""

    unit: str

    def conv(self, site: Site, out_width: int, in_width: int, form: Form | None) -> float: ...


def site_widths(site: Site, state: State) -> tuple[int, int]:
    """``(out_width, in_width)`` of ``site`` in ``state``."""
    s = site.shape
    a = state.widths[site.out_group] if site.out_group is not None else s.out_channels
    b = state.widths[site.in_group] if site.in_group is not None else s.in_channels
    return (a, a) if s.depthwise else (a, b)


def total(problem: Problem, resource: Resource, state: State, names: list[str] | None = None) -> float:
    """Sum of the resource over ``names`` (default: every site) in ``state``.

    Sites in dropped blocks count nothing; over every site (``names=None``) the dropped blocks' overheads (what
    they cost beyond their convs, :class:`~compress.planning.blocks.BlockSite`) are subtracted as well, since
    the unplanned part of the prediction holds them.
    """
    out = 0.0
    for name in problem.sites if names is None else names:
        site = problem.sites[name]
        if state.runs(site):
            out += resource.conv(site, *site_widths(site, state), state.forms.get(name))
    if names is None:
        out -= dropped_overhead(problem, resource, state)
    return out


def dropped_overhead(problem: Problem, resource: Resource, state: State) -> float:
    """What the dropped blocks cost beyond their convs (held in the unplanned part of the prediction)."""
    return sum(problem.blocks[b].overhead.get(resource.unit, 0.0) for b in state.dropped)


class LatencyResource:
    """Milliseconds from a :class:`~compress.planning.table.LatencyTable`."""

    unit = "ms"

    def __init__(self, table: LatencyTable) -> None:
        self.table = table

    def conv(self, site: Site, out_width: int, in_width: int, form: Form | None) -> float:
        t = self.table.layers[site.name]
        s = site.shape
        scale = t.out_ms(out_width) / t.full_ms
        if not s.depthwise:
            scale *= t.in_ms(in_width) / t.full_ms
        if form is not None and (out_width, in_width) != (s.out_channels, s.in_channels):
            # the dense prediction at these widths times the rewrite/dense ratio measured at exactly these widths
            pruned = s.with_channels(in_width, out_width)
            return t.full_ms * scale * self.table.entry_ms(pruned, form) / self.table.entry_ms(pruned)
        return (t.ms[form.key] if form is not None else t.full_ms) * scale


def _dense_macs(s: ConvShape) -> int:
    k2 = s.kernel[0] * s.kernel[1]
    return s.out_positions() * (k2 * s.in_channels // s.groups * s.out_channels + (s.out_channels if s.bias else 0))


class MacsResource:
    """Per-sample multiply-accumulates by formula (the counting of :func:`compress.measurement.cost`)."""

    unit = "macs"

    def conv(self, site: Site, out_width: int, in_width: int, form: Form | None) -> float:
        shape = site.shape.with_channels(in_width, out_width)
        return float(form.macs(shape) if form is not None else _dense_macs(shape))


class ParamsResource:
    """Parameter count by formula."""

    unit = "params"

    def conv(self, site: Site, out_width: int, in_width: int, form: Form | None) -> float:
        s = site.shape.with_channels(in_width, out_width)
        if form is not None:
            return float(form.param_count(s))
        k2 = s.kernel[0] * s.kernel[1]
        return float(k2 * s.in_channels // s.groups * s.out_channels + (s.out_channels if s.bias else 0))
