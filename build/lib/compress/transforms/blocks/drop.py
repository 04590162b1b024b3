"""Block dropping: replace a residual block that has an identity shortcut by ``nn.Identity``.

A block computing ``out = act(branch(x) + x)`` (``act`` = ReLU for torchvision's ResNet ``BasicBlock`` /
``Bottleneck``, none for MobileNetV2/V3 ``InvertedResidual`` and EfficientNet ``MBConv`` / ``FusedMBConv``) keeps
its input's shape, so it can be removed outright. That is exact when the branch outputs zero (and, for the ReLU
blocks, ``x >= 0``, which holds after the previous block's ReLU) and otherwise costs what
:func:`block_drop_errors` measures. It removes all of the block's ops, the big win at batch 1 on CPU where
per-op overhead dominates; a latency planner picks the blocks to drop from measured time and that cost.

Only exact types in :data:`_BLOCKS` are recognised: a subclass may override ``forward`` (no shortcut at all),
so it is never assumed to keep one. A new block type is one line there.
"""
from __future__ import annotations

from itertools import islice
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torchvision.models import efficientnet, mobilenetv2, mobilenetv3, resnet
from tqdm.auto import tqdm

from ...data.batches import batch_count, batch_inputs
from ...errors import CompressError
from ...measurement.util import model_device
from ...modes import evaluating
from ..rewrite.registry import replace_modules

__all__ = ["droppable_blocks", "drop_block", "drop_blocks", "block_drop_errors"]


def _resnet_problem(block: nn.Module) -> str | None:
    if block.downsample is not None:
        return "with a downsample shortcut changes shape"
    if block.stride != 1:
        return f"with stride {block.stride} changes shape"
    return None


def _res_connect_problem(block: nn.Module) -> str | None:
    if not block.use_res_connect:
        return "without a residual connection (use_res_connect=False: stride or channels change) changes shape"
    return None


# Exact block type -> why an instance cannot be dropped (None: it has an identity shortcut and keeps its shape).
_BLOCKS: dict[type, Callable[[nn.Module], str | None]] = {
    resnet.BasicBlock: _resnet_problem,
    resnet.Bottleneck: _resnet_problem,
    mobilenetv2.InvertedResidual: _res_connect_problem,
    mobilenetv3.InvertedResidual: _res_connect_problem,
    efficientnet.MBConv: _res_connect_problem,
    efficientnet.FusedMBConv: _res_connect_problem,
}


def _drop_problem(block: nn.Module) -> str | None:
    """Why ``block`` cannot be dropped (``None`` when it can)."""
    rule = _BLOCKS.get(type(block))
    if rule is None:
        known = ", ".join(sorted({t.__name__ for t in _BLOCKS}))
        return f"{type(block).__name__} is not a residual block with an identity shortcut (known: {known})"
    reason = rule(block)
    return f"{type(block).__name__} {reason}; only identity-shortcut blocks can be dropped" if reason else None


def droppable_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Every submodule that can be replaced by ``nn.Identity`` (its identity shortcut keeps the shape).

    Args:
        model: the network (not modified).

    Returns:
        Qualified name -> block, in module order.
    """
    return {name: m for name, m in model.named_modules() if name and _drop_problem(m) is None}


def drop_block(block: nn.Module) -> nn.Module:
    """The replacement of one droppable block: ``nn.Identity()`` (input ``(B, C, H, W)`` -> the same tensor).

    Args:
        block: a block :func:`droppable_blocks` would list (not modified).

    Raises:
        CompressError: naming the block type and why, when it has no identity shortcut.
    """
    reason = _drop_problem(block)
    if reason:
        raise CompressError(f"drop_block: {reason}")
    return nn.Identity()


def _resolve(model: nn.Module, names: Iterable[str], where: str) -> dict[str, nn.Module]:
    """Name -> block for ``names`` (duplicates once), all checked before anything happens to the model."""
    modules = dict(model.named_modules())
    chosen: dict[str, nn.Module] = {}
    for name in dict.fromkeys(names):
        block = modules.get(name) if name else None  # "" is the model itself, never a block to drop
        reason = f"no submodule {name!r}" if block is None else _drop_problem(block)
        if reason:
            listed = ", ".join(droppable_blocks(model)) or "none"
            raise CompressError(f"{where}: cannot drop {name!r}: {reason}; droppable blocks: {listed}")
        chosen[name] = block
    return chosen


def drop_blocks(model: nn.Module, names: list[str] | tuple[str, ...]) -> list[str]:
    """Replace the named blocks of ``model`` by ``nn.Identity`` in place.

    Every name is checked first, so a bad one leaves the model untouched.

    Args:
        model: the network, modified in place.
        names: qualified names of blocks listed by :func:`droppable_blocks`.

    Returns:
        The names dropped, in module order.

    Raises:
        CompressError: naming an unknown or non-droppable block and listing the droppable ones.
    """
    chosen = _resolve(model, names, "drop_blocks")
    return replace_modules(model, lambda name, block: drop_block(block), lambda name, m: name in chosen)


class _DropErrors:
    """Forward hooks accumulating, per block, ``sum((out - x)**2)`` and ``sum(out**2)`` in float64."""

    def __init__(self, blocks: dict[str, nn.Module], device: torch.device) -> None:
        zero = torch.zeros((), dtype=torch.float64, device=device)
        self.err = {name: zero.clone() for name in blocks}
        self.energy = {name: zero.clone() for name in blocks}
        self.handles = [block.register_forward_hook(self._hook(name)) for name, block in blocks.items()]

    def _hook(self, name: str) -> Callable[[nn.Module, tuple, Any], None]:
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            # Summed on the device (no sync per call); the difference in the activations' dtype, sums in float64.
            self.err[name] += (out - args[0]).double().square().sum()
            self.energy[name] += out.double().square().sum()
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def ratios(self) -> dict[str, float]:
        """Name -> ``err / energy`` (0.0 where the energy is 0)."""
        return {name: float(self.err[name] / e) if e > 0 else 0.0 for name, e in self.energy.items()}


def block_drop_errors(model: nn.Module, batches: Iterable, *, names: list[str] | None = None,
                      max_batches: int | None = None, verbose: bool = False) -> dict[str, float]:
    """Per block, the fraction of its output's energy lost by replacing it with the identity.

    ``||out - x||^2 / ||out||^2`` summed over all calls and batches (0.0 for a block whose output is all zero or
    that never ran), streamed through forward hooks: no activation is stored. Each block sees its input in the
    real model, with every other block in place, so these are per-block costs, not the joint cost of dropping
    several (errors compound along the network).

    Args:
        model: the network; runs in eval mode without gradients, its train/eval flags restored afterwards.
        batches: calibration batches, each images ``(B, C, H, W)`` or ``(images, labels, ...)``; moved to the
            model's device.
        names: blocks to measure (default: every one :func:`droppable_blocks` lists).
        max_batches: use at most this many batches.
        verbose: show a progress bar.

    Returns:
        Name -> relative squared error in ``[0, inf)``, in module order for the default names.

    Raises:
        CompressError: an unknown or non-droppable name, ``max_batches < 1``, or no batch at all.
    """
    if max_batches is not None and max_batches < 1:
        raise CompressError(f"block_drop_errors: max_batches must be >= 1, got {max_batches}")
    blocks = droppable_blocks(model) if names is None else _resolve(model, names, "block_drop_errors")
    device = model_device(model)
    seen = 0
    errors = _DropErrors(blocks, device)
    try:
        with evaluating(model), torch.no_grad():
            bar = tqdm(islice(batches, max_batches), total=batch_count(batches, max_batches), desc="block drop errors",
                       unit="batch", leave=False, disable=not verbose)
            for batch in bar:
                model(batch_inputs(batch, what="block_drop_errors").to(device))
                seen += 1
    finally:
        errors.remove()
    if not seen:
        raise CompressError("block_drop_errors: the batches yielded nothing; expected at least one batch")
    return errors.ratios()
