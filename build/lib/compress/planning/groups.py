"""Coupled channel groups: channels that must be pruned together (torch-pruning's dependency groups).

A residual add couples the outputs of every conv feeding it; a depthwise conv couples its input and output
with the conv before it. Each :class:`ChannelGroup` lists the convs whose output channels are the group's
channels (``producers``), the depthwise convs inside it, and the convs that read it (``consumers``), so the
planner knows which table entries a width change touches.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from .shapes import ConvShape

__all__ = ["ChannelGroup", "find_groups", "dependency_graph"]


@dataclass
class ChannelGroup:
    """One set of channels pruned together.

    Attributes:
        root: qualified name of the module torch-pruning roots the group at (pruned with its pruner's
            ``prune_out_channels``); indices below are in its output-channel numbering.
        width: number of channels.
        producers: dense convs whose output channels are these channels.
        depthwise: depthwise convs whose input and output channels are these channels.
        consumers: convs whose input channels are these channels.
        weight_importance: per channel, torch-pruning's group L2 magnitude importance (used without analysis).
    """

    root: str
    width: int
    producers: list[str] = field(default_factory=list)
    depthwise: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    weight_importance: list[float] = field(default_factory=list)

    @property
    def convs(self) -> list[str]:
        return self.producers + self.depthwise + self.consumers


def dependency_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of ``model``, with compress' shuffle/permute pruners registered."""
    from ..transforms.prune.tp_compat import build_graph

    return build_graph(model, example_inputs)


def _locked(model: nn.Module, example_inputs: torch.Tensor) -> list[nn.Module]:
    """Layers whose channels cannot be pruned consistently (shuffles next to grouped convs, protected ends)."""
    from ..transforms.prune.layer_roles import locked_layers
    from ..transforms.prune.tp_compat import build_graph

    return list(locked_layers(build_graph(model, example_inputs)))


def _classify(group: Any, names: dict[nn.Module, str], shapes: dict[str, ConvShape],
              width: int) -> ChannelGroup | str:
    """Sort a tp group's convs by role, or say why the planner leaves it alone."""
    root = group[0].dep.target.module
    out = ChannelGroup(root=names[root], width=width)
    for item in group.items:
        module, handler = item.dep.target.module, item.dep.handler.__name__
        if isinstance(module, nn.Linear) and handler == "prune_out_channels":
            return "reaches a Linear layer's outputs"
        if not isinstance(module, nn.Conv2d):
            continue
        name = names.get(module, "?")
        if len(item.idxs) != width or list(item.idxs) != list(getattr(item, "root_idxs", item.idxs)):
            return f"{name} maps channels with an offset (concat/split)"
        shape = shapes.get(name)
        if shape is None or shape.calls != 1:
            return f"{name} is shared or never runs"
        if shape.depthwise:
            if name not in out.depthwise:
                out.depthwise.append(name)
        elif shape.groups != 1:
            return f"{name} is a grouped conv (groups={shape.groups})"
        elif handler == "prune_out_channels":
            out.producers.append(name)
        else:
            out.consumers.append(name)
    if not out.producers and not out.depthwise:
        return "no conv produces these channels"
    return out


def find_groups(model: nn.Module, example_inputs: torch.Tensor, shapes: dict[str, ConvShape]
                ) -> tuple[list[ChannelGroup], list[str]]:
    """The prunable channel groups of ``model`` rooted at its convs.

    Linear layers are never roots (their outputs are the model's logits) but their inputs are pruned along.

    Args:
        model: the network (not modified).
        example_inputs: ``(1, C, H, W)`` for tracing.
        shapes: :func:`~compress.planning.shapes.capture_shapes` of the model.

    Returns:
        ``(groups, notes)``: the groups in graph order and one note per group left alone (with the reason).
    """
    names = {m: n for n, m in model.named_modules()}
    ignored = [m for m in model.modules() if isinstance(m, nn.Linear)] + _locked(model, example_inputs)
    dg = dependency_graph(model, example_inputs)
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    groups, notes = [], []
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d]):
        width = len(group[0].idxs)
        found = _classify(group, names, shapes, width)
        if isinstance(found, str):
            notes.append(f"group at {names.get(group[0].dep.target.module, '?')}: {found}")
            continue
        with torch.no_grad():
            found.weight_importance = [float(v) for v in importance(group)]
        groups.append(found)
    return groups, notes
