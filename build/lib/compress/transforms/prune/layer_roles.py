"""Roles of layers read off a torch-pruning dependency graph (built by :func:`.tp_compat.build_graph`).

* :func:`layer_width`: a prunable layer's output channels (conv) or features (linear).
* :func:`unknown_layers`: user layers with weights of their own that no transform understands (left alone).

* :func:`output_layers`: the classifier, whose output channels are the model's outputs.
* :func:`locked_layers`: producers of channels that tp's index-mapped pruning cannot keep consistent.
* :func:`direct_producer`: the conv whose output channels are another conv's input channels.

"Channel-mixing" layers are convs (not depthwise) and linears: they end a channel's identity. Everything else
on a path (BN, activations, pooling, adds, depthwise convs, shuffles, permutes) carries coupled channels on.
"""
from __future__ import annotations

from typing import Any, Callable

import torch_pruning as tp
from torch import nn

from ..modules import ChannelPermute, ChannelShuffle

__all__ = ["layer_width", "output_layers", "locked_layers", "direct_producer", "unknown_layers"]


def layer_width(module: nn.Module) -> int | None:
    """Output channels of a conv, output features of a linear; ``None`` for anything else."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels
    return module.out_features if isinstance(module, nn.Linear) else None


def _walk(start: Any, step: Callable[[Any], list], stop: Callable[[Any], bool]) -> list:
    """Nodes where ``stop`` holds, reached from ``start`` through nodes where it does not (not ``start`` itself)."""
    stack, seen, found = list(step(start)), {start}, []
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if stop(node):
            found.append(node)
        else:
            stack.extend(step(node))
    return found


def _mixes(node: Any) -> bool:
    return isinstance(node.module, (nn.Conv2d, nn.Linear)) and node.type != tp.ops.OPTYPE.DEPTHWISE_CONV


def _grouped(node: Any) -> bool:
    """A conv with ``groups > 1`` that tp does not treat as depthwise (pruned per whole group position)."""
    return _mixes(node) and isinstance(node.module, nn.Conv2d) and node.module.groups > 1


def _multiplier_depthwise(module: nn.Module) -> bool:
    """A depthwise conv with channel multiplier > 1 (``groups == in_channels < out_channels``)."""
    if not isinstance(module, nn.Conv2d):
        return False
    return module.groups == module.in_channels > 1 and module.out_channels != module.in_channels


def _coupled(start: Any) -> tuple[list, list]:
    """Channel-mixing ``(producers, consumers)`` of every channel coupled with ``start``'s through other ops.

    A producer's other readers see the same channels, so they count as consumers; non-mixing ops are crossed in
    both directions (an add couples its two inputs). Concatenations and splits are crossed whole, which may
    over-approximate: callers use the result to lock, where more is safe.
    """
    producers: dict[Any, None] = {}
    consumers: dict[Any, None] = {}
    stack = [(n, True) for n in start.inputs] + [(n, False) for n in start.outputs]
    seen = {start}
    while stack:
        node, upstream = stack.pop()
        if _mixes(node):
            found = producers if upstream else consumers
            if node not in found and upstream:
                stack.extend((n, False) for n in node.outputs)
            found[node] = None
        elif node not in seen:
            seen.add(node)
            stack.extend([(n, True) for n in node.inputs] + [(n, False) for n in node.outputs])
    return list(producers), list(consumers)


def locked_layers(graph: "tp.DependencyGraph") -> set[nn.Module]:
    """Layers whose output channels tp cannot prune consistently here; pass them as ignored layers.

    * Producers of a :class:`ChannelShuffle` whose output feeds a grouped conv: removing one position from every
      shuffle group takes ``groups`` adjacent output channels, which all sit in one group of the grouped
      consumer and would unbalance it.
    * Producers of the channels through a :class:`ChannelPermute` when a grouped conv produces or reads any of
      them (a grouped rewrite's permute left between a residual stream and its grouped convs): tp picks the same
      position in every group on one side of the permute, which lands on arbitrary positions on the other side.
    * Producers of a depthwise conv with channel multiplier > 1 (the separable rewrite's
      ``Conv2d(M, M*T, groups=M)``): tp 1.6's importance code indexes its weight's size-1 input axis and fails.
    """
    locked: set[nn.Module] = set()
    for module, node in graph.module2node.items():
        if isinstance(module, ChannelPermute):
            producers, consumers = _coupled(node)
            if any(_grouped(n) for n in producers + consumers):
                locked.update(p.module for p in producers)
            continue
        consumers = _walk(node, lambda n: n.outputs, _mixes) if isinstance(module, ChannelShuffle) else []
        if any(_grouped(c) for c in consumers) or _multiplier_depthwise(module):
            locked.update(p.module for p in _walk(node, lambda n: n.inputs, _mixes))
    return locked


def output_layers(graph: "tp.DependencyGraph") -> set[nn.Module]:
    """Convs / linears whose output channels reach the model output unchanged in number (the classifier).

    Found by walking back from the graph's sinks (the traced outputs) through channel-preserving ops (BN,
    activations, pooling, flatten, adds, concatenations, depthwise convs) to the first channel-mixing conv /
    linear on each path, so a final conv classifier (SqueezeNet) is found as well as a final ``Linear``.
    """
    stack = [node for node in graph.module2node.values() if not node.outputs]
    seen, found = set(), set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        module = node.module
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            found.add(module)
            if node.type != tp.ops.OPTYPE.DEPTHWISE_CONV:
                continue
        stack.extend(node.inputs)
    return found


def direct_producer(graph: "tp.DependencyGraph", conv: nn.Module) -> nn.Conv2d | None:
    """The conv whose output channels, index for index, are ``conv``'s input channels, if there is one.

    Walks back from ``conv`` through single-input BatchNorms and element-wise ops (activations, pooling) only;
    an add, concatenation, reshape, permute or the model input on the way means no single producer.
    """
    node = graph.module2node.get(conv)
    while node is not None and len(node.inputs) == 1:
        node = node.inputs[0]
        if isinstance(node.module, nn.Conv2d):
            return node.module
        if not isinstance(node.module, (nn.modules.batchnorm._BatchNorm, tp.ops._ElementWiseOp)):
            return None
    return None


_KNOWN_PREFIXES = ("torch.", "torchvision.", "compress.", "timm.")


def unknown_layers(model: nn.Module) -> dict[str, str]:
    """Layers holding parameters of their own whose type comes from none of torch, torchvision, timm, compress.

    Transforms leave such layers unchanged (they cannot know how their weights map to channels); the steps name
    them with this reason so that nothing is skipped silently.

    Returns:
        ``{qualified name: reason}``.
    """
    found = {}
    for name, module in model.named_modules():
        owns_weights = next(module.parameters(recurse=False), None) is not None
        if owns_weights and not type(module).__module__.startswith(_KNOWN_PREFIXES):
            found[name] = f"unknown layer type {type(module).__name__}: left unchanged"
    return found
