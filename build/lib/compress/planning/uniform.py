"""The usual baseline a plan is compared with: torch-pruning's uniform magnitude pruning (same ratio everywhere).

Used by the benchmarks to put a planned model next to torch-pruning's ``MagnitudePruner`` at the same MACs
(or at a fixed channel ratio).
"""
from __future__ import annotations

import copy
import inspect

import torch
import torch_pruning as tp
from torch import nn

from ..errors import CompressError
from ..measurement import cost
from ..transforms.prune.tp_compat import traceable

__all__ = ["uniform_prune", "uniform_at_macs"]


def uniform_prune(model: nn.Module, example_inputs: torch.Tensor, *, ratio: float,
                  round_to: int | None = 8) -> nn.Module:
    """A deep copy of ``model`` with ``ratio`` of every prunable group's channels removed by L2 magnitude.

    Args:
        model: not modified.
        example_inputs: ``(1, C, H, W)`` for tracing.
        ratio: channel fraction removed per group, in ``[0, 1)``.
        round_to: keep widths multiples of this (``None``: any width).
    """
    if not 0.0 <= ratio < 1.0:
        raise CompressError(f"uniform_prune ratio: expected a fraction in [0, 1), got {ratio!r}")
    twin = copy.deepcopy(model)
    if ratio == 0.0:
        return twin
    ignored = [m for m in twin.modules() if isinstance(m, nn.Linear)]  # the classifier's outputs stay
    # fresh containers: torch-pruning's defaults are shared mutable dicts (passed where this version takes them)
    fresh = {k: {} for k in ("in_channel_groups", "out_channel_groups", "num_heads", "channel_groups",
                             "customized_pruners", "unwrapped_parameters")}
    accepted = inspect.signature(tp.pruner.MagnitudePruner.__init__).parameters
    with traceable(twin):
        pruner = tp.pruner.MagnitudePruner(
            twin, example_inputs, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
            ignored_layers=ignored, round_to=round_to, **{k: v for k, v in fresh.items() if k in accepted})
        pruner.step()
    return twin


def uniform_at_macs(model: nn.Module, example_inputs: torch.Tensor, *, macs: float, round_to: int | None = 8,
                    steps: int = 12, max_ratio: float = 0.9) -> tuple[nn.Module, float]:
    """Uniformly pruned copy whose MACs are the closest to ``macs`` from below (else the smallest reached).

    Ratios ``max_ratio * k / steps`` for ``k = 1..steps`` are tried: with ``round_to`` the MACs are not
    monotonic in the ratio (torch-pruning leaves a group alone when rounding would empty it), so a bisection
    could miss.

    Returns:
        ``(model, ratio)``.
    """
    tried = []
    for k in range(1, steps + 1):
        ratio = max_ratio * k / steps
        pruned = uniform_prune(model, example_inputs, ratio=ratio, round_to=round_to)
        tried.append((cost(pruned, example_inputs).macs, ratio, pruned))
    below = [t for t in tried if t[0] <= macs]
    got, ratio, pruned = max(below, key=lambda t: t[0]) if below else min(tried, key=lambda t: t[0])
    return pruned, ratio
