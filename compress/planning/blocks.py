"""Residual blocks the planner may drop whole: their convs, accuracy cost and the part of their cost no conv has.

A block with an identity shortcut, ``out = act(branch(x) + x)``, can be replaced by the identity
(:mod:`compress.transforms.blocks.drop`). On a CPU at batch 1 much of a small model's time is per-op overhead
(activations, adds, dispatch) that pruning channels never removes; dropping a block removes all of it. The
planner therefore prices a drop as the block's convs (table times at their current widths) plus its
*overhead*: the block's whole cost at full width minus its convs' (measured for latency, counted for MACs and
parameters).

Accuracy cost: :func:`~compress.planning.costs.loss_ratio` of the fraction of the block output's energy lost
by replacing it with its input, measured on calibration data with every other block in place (a per-block
cost; dropping two neighbours costs more than the sum says, which the fine-tune and the report then show).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
import torch
from torch import nn

from ..measurement import cost
from ..env import resolve_device
from ..measurement.timing import as_dtype, cudnn_benchmark
from ..measurement.util import model_device
from ..hooks import probe
from .costs import loss_ratio
from .shapes import ConvShape

if TYPE_CHECKING:
    from .table import Conditions

__all__ = ["BlockSite", "find_blocks", "block_whole", "overhead"]


@dataclass
class BlockSite:
    """One droppable residual block.

    Attributes:
        name: qualified module name.
        convs: the convs inside it (all of them sites of the problem).
        in_shape: ``(C, H, W)`` of its input (= its output).
        cost: accuracy cost of replacing it with the identity.
        overhead: by resource unit (``"ms"``, ``"macs"``, ``"params"``), what the block costs beyond its convs'
            entries at full width; set by the planner once the resource is known.
    """

    name: str
    convs: list[str]
    in_shape: tuple[int, ...]
    cost: float
    overhead: dict[str, float] = field(default_factory=dict)


def _input_shapes(model: nn.Module, blocks: dict[str, nn.Module], x: torch.Tensor) -> dict[str, list]:
    """Each block's input shapes, one per call (shared or unused blocks are left alone by the caller)."""
    seen: dict[str, list] = {name: [] for name in blocks}
    probe(model, [(b, lambda m, args, out, n=name: seen[n].append(tuple(args[0].shape[1:])))
                  for name, b in blocks.items()], x)
    return seen


def find_blocks(model: nn.Module, x: torch.Tensor, shapes: dict[str, ConvShape],
                errors: dict[str, float]) -> tuple[dict[str, BlockSite], list[str]]:
    """The droppable blocks of ``model`` that ran once and have a measured drop error.

    Args:
        model: the network (not modified).
        x: ``(1, C, H, W)`` example input.
        shapes: conv shapes of ``model`` (:func:`~compress.planning.shapes.capture_shapes`).
        errors: block name -> fraction of its output energy lost when dropped
            (:func:`compress.transforms.blocks.drop.block_drop_errors`).

    Returns:
        ``(blocks, notes)``: the blocks by name, and why others were left alone.
    """
    from ..transforms.blocks.drop import droppable_blocks

    found = droppable_blocks(model)
    calls = _input_shapes(model, found, x)
    blocks, notes = {}, []
    for name, module in found.items():
        convs = [n for n, m in module.named_modules(prefix=name) if isinstance(m, nn.Conv2d)]
        if len(calls[name]) != 1 or any(n not in shapes or shapes[n].calls != 1 for n in convs):
            notes.append(f"block {name}: shared or not run once; not dropped")
        elif name not in errors:
            notes.append(f"block {name}: no drop error measured; not dropped")
        else:
            blocks[name] = BlockSite(name, convs, calls[name][0], loss_ratio(errors[name]))
    return blocks, notes


def block_whole(model: nn.Module, blocks: dict[str, BlockSite], unit: str, conditions: Conditions, *,
                fold_bn: bool = True, warmup: int = 2, runs: int = 5) -> dict[str, float]:
    """Each block's whole cost at full width in ``unit``: fastest time in ms in ``runtime`` (BN folded when
    ``fold_bn``, as the planner's latency is; always in runtimes other than ``torch``), or per-sample MACs /
    parameters as :func:`compress.measurement.cost` counts them.
    """
    modules = dict(model.named_modules())
    if unit in ("macs", "params"):
        out = {}
        for name, b in blocks.items():
            block = modules[name]
            c = cost(block, torch.zeros(1, *b.in_shape, device=model_device(block)))
            out[name] = float(c.macs if unit == "macs" else c.params)
        return out
    from ..transforms.blocks.fold_bn import fold_batchnorm
    from .table import measure_ms, runtime_calls

    device, dtype, batch = resolve_device(conditions.device), as_dtype(conditions.dtype), conditions.batch
    channels_last, runtime = conditions.channels_last, conditions.runtime
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    timed: dict[str, tuple[nn.Module, torch.Tensor]] = {}
    for name, b in blocks.items():
        x = torch.randn(batch, *b.in_shape, device=device, dtype=dtype).contiguous(memory_format=fmt)
        block = copy.deepcopy(modules[name]).to(device).eval()
        if fold_bn:
            block = fold_batchnorm(block, example_inputs=x[:1].float())
        timed[name] = (block.to(device=device, dtype=dtype, memory_format=fmt).requires_grad_(False), x)
    calls = runtime_calls(timed, runtime=runtime, device=device, dtype=dtype, channels_last=channels_last)
    with cudnn_benchmark(device):  # as the latency table's convs are timed
        return measure_ms(calls, device=device, warmup=warmup, runs=runs)


def overhead(whole: float, convs: float) -> float:
    """What a block costs beyond its convs (never negative: table times are fastest-of-many, whole too)."""
    return max(0.0, whole - convs)

