"""Carry out a plan: prune its channel groups with torch-pruning, drop its residual blocks, then rewrite its convs.

Pruning goes first and uses the plan's exact channel indices (no importance is recomputed), so the result is
the model the planner measured. Rewrites then run on the pruned convs through
:func:`compress.transforms.rewrite.apply.rewrite`, which also folds grouped rewrites' channel permutes into
neighbouring layers where that is exact.
"""
from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from ..errors import CompressError
from ..transforms.prune.guard import GroupGuard
from .groups import dependency_graph
from .result import LayerChoice, Plan

__all__ = ["apply_plan", "apply_choices"]


def _prune(model: nn.Module, choices: list[LayerChoice], example_inputs: torch.Tensor) -> list[str]:
    dg = dependency_graph(model, example_inputs)
    guard = GroupGuard(model, example_inputs)
    modules = dict(model.named_modules())
    for c in choices:
        root = modules.get(c.layer)
        if not isinstance(root, nn.Conv2d) or root.out_channels != c.width_from:
            got = f"{type(root).__name__} with {getattr(root, 'out_channels', '?')} outputs" if root else "nothing"
            raise CompressError(f"apply_plan: expected a Conv2d {c.layer!r} with {c.width_from} output channels, "
                                f"found {got}; apply a plan only to the model it was made for")
        pruner = dg.get_pruner_of_module(root)
        group = dg.get_pruning_group(root, pruner.prune_out_channels, list(c.removed))
        if not dg.check_pruning_group(group):
            raise CompressError(f"apply_plan: torch-pruning refuses to prune group {c.layer!r} to {c.width_to}")
        guard.prune(dg, group)  # rolled back and noted if torch-pruning fails on it or it breaks the model
    return [f"{s.root}: pruning skipped ({s.reason})" for s in guard.skipped]


def _rewrite(model: nn.Module, choices: list[LayerChoice], example_inputs: torch.Tensor, calib: list | None,
             verbose: bool) -> list[str]:
    from ..transforms.rewrite.apply import rewrite

    batches: dict[tuple, list[str]] = defaultdict(list)
    for c in choices:
        batches[(c.form, tuple(sorted(c.params.items())))].append(c.layer)
    notes = []
    for (kind, params), layers in batches.items():
        records = rewrite(model, kind, layers=layers, example_inputs=example_inputs, calib=calib, min_channels=1,
                          verbose=verbose, **dict(params))
        for r in records:
            if r.skipped:
                raise CompressError(f"apply_plan: {kind} rewrite of {r.layer!r} was refused: {r.skipped}")
            for part, status in r.details.get("permutes", {}).items():
                if status != "absorbed":
                    notes.append(f"{r.layer}.{part}: channel permute kept ({status})")
    return notes


def apply_choices(model: nn.Module, choices: list[LayerChoice], example_inputs: torch.Tensor, *,
                  calib: list | None = None, verbose: bool = False) -> list[str]:
    """Apply ``choices`` to ``model`` in place; return notes (e.g. groups torch-pruning failed on, left unpruned;
    channel permutes that could not be folded).

    ``calib`` (calibration batches) makes separable rewrites data-aware, as in the ``rewrite`` step."""
    x = example_inputs[:1]
    prunes = [c for c in choices if c.form == "prune"]
    notes = _prune(model, prunes, x) if prunes else []
    drops = [c.layer for c in choices if c.form == "drop"]
    if drops:  # after pruning: a group may be rooted inside a dropped block
        from ..transforms.blocks.drop import drop_blocks

        drop_blocks(model, drops)
    return notes + _rewrite(model, [c for c in choices if c.form not in ("prune", "drop")], x, calib, verbose)


def apply_plan(model: nn.Module, plan: Plan, example_inputs: torch.Tensor, *, calib: list | None = None,
               verbose: bool = False) -> nn.Module:
    """Prune, drop blocks and rewrite ``model`` in place as ``plan`` says, and return it.

    Args:
        model: the model the plan was made for (same architecture and widths).
        plan: from :func:`compress.planning.plan`.
        example_inputs: ``(1, C, H, W)`` on the model's device, for tracing.
        calib: calibration batches (a list: read once per rewrite kind) that make separable rewrites data-aware;
            pass the ones the plan was made with, so the model is the one the planner measured and priced.
        verbose: progress bars of the rewrites.

    Raises:
        CompressError: the model does not match the plan (a layer is missing or has other widths).
    """
    apply_choices(model, plan.choices, example_inputs, calib=calib, verbose=verbose)
    return model
