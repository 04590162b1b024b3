"""The planning problem: which convs can change, how (widths of their channel groups, rewrites), at what cost.

:func:`build_problem` traces the model once (shapes, torch-pruning groups), lists each group's aligned
candidate widths with the order and cost in which its channels would go, and each dense conv's rewrites with
their reconstruction cost. The planner then only does arithmetic on this (plus the latency table).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from .blocks import BlockSite, find_blocks
from .candidates import Form, aligned_widths, rewrite_forms
from .costs import removal_order, rewrite_cost
from .groups import ChannelGroup, find_groups
from .shapes import ConvShape, capture_shapes
from .table import TableRequest

__all__ = ["Site", "GroupSite", "Problem", "build_problem"]


@dataclass
class Site:
    """One conv the plan can change.

    Attributes:
        name: qualified module name.
        shape: the conv as it runs now.
        out_group / in_group: index of the group holding its output / input channels (``None``: fixed).
            A depthwise conv has both set to the same group.
        forms: rewrites it may take; ``form_costs``: their cost by :attr:`Form.key` (see :meth:`Problem.price`).
        block: the droppable residual block it lies in (``None``: none).
    """

    name: str
    shape: ConvShape
    out_group: int | None = None
    in_group: int | None = None
    forms: list[Form] = field(default_factory=list)
    form_costs: dict[str, float] = field(default_factory=dict)
    block: str | None = None


@dataclass
class GroupSite:
    """A prunable channel group with its candidate widths and removal order.

    Attributes:
        group: the :class:`~compress.planning.groups.ChannelGroup`.
        grid: candidate widths below the current one, largest first.
        order: channels in removal order (root numbering); ``cumulative[k]``: cost of removing the first ``k``.
    """

    group: ChannelGroup
    grid: list[int]
    order: list[int]
    cumulative: list[float]

    @property
    def width(self) -> int:
        return self.group.width

    def cost_to(self, width: int) -> float:
        """Cost of pruning the group from its full width down to ``width``."""
        return self.cumulative[self.width - width]

    def removed(self, width: int) -> list[int]:
        """Root-numbered channels removed to reach ``width``, ascending."""
        return sorted(self.order[:self.width - width])


@dataclass
class Problem:
    """Sites (convs), prunable groups and droppable blocks of a model, plus notes on what was left alone and why."""

    sites: dict[str, Site]
    groups: list[GroupSite]
    notes: list[str] = field(default_factory=list)
    blocks: dict[str, BlockSite] = field(default_factory=dict)

    def group_sites(self, gid: int) -> list[str]:
        """Sites whose channels change with group ``gid``."""
        return [n for n, s in self.sites.items() if gid in (s.out_group, s.in_group)]

    def price(self, model: nn.Module, saves: Callable[[Site, Form], bool], *, calib: list | None = None,
              verbose: bool = False) -> None:
        """Keep only the rewrites that ``saves`` at full width and price those (pricing can take seconds a conv).

        Args:
            model: the model the problem was built from (real weights).
            saves: ``(site, form) -> bool``, e.g. "the table says the form is faster than the dense conv".
            calib: calibration batches: separable forms are then priced by their expected output error on the
                convs' measured input patch moments (as the data-aware rewrite builds them), else by weight error.
            verbose: progress bar.
        """
        modules = dict(model.named_modules())
        todo = [s for s in self.sites.values() if s.forms]
        for site in todo:
            site.forms = [f for f in site.forms if saves(site, f)]
        moments = _input_moments(model, modules, todo, calib, verbose)
        for site in tqdm(todo, desc="rewrite costs", leave=False, disable=not verbose):
            site.form_costs = {f.key: rewrite_cost(modules[site.name], f, moments=moments.get(site.name))
                               for f in site.forms}

    def requests(self) -> dict[str, TableRequest]:
        """Latency-table requests covering every width and form the planner may pick."""
        out = {}
        for name, s in self.sites.items():
            widths = lambda g: tuple(self.groups[g].grid) if g is not None else ()  # noqa: E731
            in_widths = () if s.shape.depthwise else widths(s.in_group)
            out[name] = TableRequest(s.shape, widths(s.out_group), in_widths, tuple(s.forms))
        return out


def _input_moments(model: nn.Module, modules: dict[str, nn.Module], sites: list[Site], calib: list | None,
                       verbose: bool) -> dict[str, torch.Tensor]:
    """Input patch moments of the convs a data-aware form may rewrite (none without ``calib``)."""
    convs = {s.name: modules[s.name] for s in sites if any(f.config.reads_inputs for f in s.forms)}
    if not calib or not convs:
        return {}
    from ..transforms.rewrite.patch_stats import capture_patch_moments

    return capture_patch_moments(model, convs, calib, verbose=verbose)


def _group_site(group: ChannelGroup, analysis: Any, dead: Any, *, align: int, min_keep: float,
                max_widths: int) -> GroupSite | None:
    grid = aligned_widths(group.width, align=align, min_keep=min_keep, max_widths=max_widths)
    if not grid:
        return None
    order, cumulative = removal_order(group, analysis, limit=group.width - grid[-1], dead=dead)
    return GroupSite(group, grid, order, cumulative)


def build_problem(model: nn.Module, example_inputs: torch.Tensor, *, kinds: tuple[str, ...], align: int,
                  min_keep: float = 0.25, max_widths: int = 8, analysis: Any = None,
                  drop_errors: dict[str, float] | None = None, verbose: bool = False) -> Problem:
    """Trace ``model`` and collect everything the planner may change (rewrites are priced by :meth:`Problem.price`).

    Args:
        model: the network (not modified).
        example_inputs: ``(1, C, H, W)`` on the model's device.
        kinds: allowed forms (``"prune"`` and/or rewrite kinds).
        align / min_keep / max_widths: candidate widths (see :func:`~compress.planning.candidates.aligned_widths`).
        analysis: an :class:`~compress.analysis.Analysis` of the model for channel costs, or ``None``.
        drop_errors: with ``"drop"`` in ``kinds``, each droppable block's measured drop error
            (:func:`compress.transforms.blocks.drop.block_drop_errors`); blocks are dropped only with it.
        verbose: progress bar over groups.
    """
    shapes = capture_shapes(model, example_inputs)
    modules = dict(model.named_modules())
    sites: dict[str, Site] = {}
    groups: list[GroupSite] = []
    notes: list[str] = []
    if "prune" in kinds:
        found, notes = find_groups(model, example_inputs, shapes)
        dead = analysis.dead_channels() if analysis is not None else None
        for group in tqdm(found, desc="channel costs", leave=False, disable=not verbose):
            site = _group_site(group, analysis, dead, align=align, min_keep=min_keep, max_widths=max_widths)
            if site is None:
                notes.append(f"group at {group.root}: {group.width} channels leave no aligned width "
                             f"(align={align}, min_keep={min_keep})")
                continue
            gid = len(groups)
            groups.append(site)
            for name in group.producers + group.depthwise:
                sites.setdefault(name, Site(name, shapes[name])).out_group = gid
            for name in group.depthwise + group.consumers:
                sites.setdefault(name, Site(name, shapes[name])).in_group = gid
    for name, shape in shapes.items():
        if type(modules[name]) is nn.Conv2d and shape.calls == 1 and rewrite_forms(shape, kinds):
            sites.setdefault(name, Site(name, shape)).forms = rewrite_forms(shape, kinds)
    blocks: dict[str, BlockSite] = {}
    if "drop" in kinds and drop_errors is None:
        notes.append("drop: no calibration data to price dropping a block; no block is dropped")
    elif "drop" in kinds:
        blocks, dropped_notes = find_blocks(model, example_inputs, shapes, drop_errors)
        notes += dropped_notes
        for block in blocks.values():
            for name in block.convs:  # every conv of a block is a site, so a drop saves its measured time
                sites.setdefault(name, Site(name, shapes[name])).block = block.name
    return Problem(sites, groups, notes, blocks)
