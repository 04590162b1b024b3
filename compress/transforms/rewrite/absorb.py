"""Fold ``ChannelPermute`` modules into the weights of the layers around them, where that is exact.

A permute ``out[:, j] = x[:, perm[j]]`` can disappear if either side of it is reordered instead:

* *downstream*: every layer that reads the permute's output (and everything coupled with those channels, e.g.
  the other branch of a residual add) reorders its channels by ``perm^-1``;
* *upstream*: every layer that produces the permute's input (and every other reader of it) reorders by ``perm``.

Which layers are "coupled" is exactly torch-pruning's notion of a pruning group, so we ask its
``DependencyGraph`` for the group of the permute's output (or input) channels, with the permute registered as a
boundary (its input and output channels decoupled). The fold is applied only when every member of the group can
be reordered exactly:

* plain convs (``groups == 1``: output dim and bias, or input dim) and depthwise convs (per channel),
* BatchNorm (affine parameters and running statistics), Linear (through an identity flatten), PReLU,
* other ``ChannelPermute`` modules at the boundary (their index is composed with ours),
* element-wise operations (activations, adds, pooling),

and the group's channel indices map one to one (no concatenation, split or non-trivial flatten). A group that
reaches a grouped conv, a shuffle, the model output, an unwrapped parameter or any other layer type is left
alone and the permute stays as a module (reported with the reason). Folded permutes become ``nn.Identity``
and a rewrite's ``Sequential`` that is left with just its conv collapses to that conv.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch_pruning as tp
from torch import nn
from tqdm.auto import tqdm

from ..modules import ChannelPermute
from .registry import replace_modules
from ..prune.tp_compat import RUNAWAY, RunawayGroup, bounded_group, build_graph

__all__ = ["absorb_permutes"]

_REWRITE_PARTS = {"permute_in", "conv", "permute_out"}


class _BoundaryPruner(tp.pruner.BasePruningFunc):
    """Registers ``ChannelPermute`` as a graph node whose input and output channels are *not* coupled."""

    TARGET_MODULES = ChannelPermute

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        raise RuntimeError("boundary pruner is only used to find groups")

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        raise RuntimeError("boundary pruner is only used to find groups")

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.perm.numel()

    get_in_channels = get_out_channels


class _Plan:
    """Reorderings that fold one permute: ``(tensor, dim)`` pairs and boundary permutes to compose."""

    def __init__(self, order: torch.Tensor) -> None:
        self.order = order  # new channel k holds old channel order[k]
        self.tensors: dict[tuple[int, int], tuple[torch.Tensor, int]] = {}
        self.permutes: dict[int, tuple[ChannelPermute, bool]] = {}  # id -> (module, its input side?)
        self.modules: set[int] = set()

    def add(self, module: nn.Module, tensor: torch.Tensor | None, dim: int) -> None:
        self.modules.add(id(module))
        if tensor is not None:
            self.tensors[(id(tensor), dim)] = (tensor, dim)

    def apply(self) -> None:
        with torch.no_grad():
            for tensor, dim in self.tensors.values():
                tensor.copy_(tensor.index_select(dim, self.order.to(tensor.device)))
            inverse = torch.argsort(self.order)
            for permute, input_side in self.permutes.values():
                perm = permute.perm
                # it read old channel perm[j] = new channel inverse[perm[j]]; or it must now emit new order
                new = inverse.to(perm.device)[perm] if input_side else perm[self.order.to(perm.device)]
                permute.perm.copy_(new)


def _conv_entries(plan: _Plan, conv: nn.Module, output_side: bool) -> str | None:
    if conv.transposed:
        return "a transposed conv"
    depthwise = conv.groups == conv.in_channels == conv.out_channels
    if conv.groups != 1 and not depthwise:
        return f"a grouped conv (groups={conv.groups})"
    if output_side or depthwise:
        plan.add(conv, conv.weight, 0)
        plan.add(conv, conv.bias, 0)
    else:
        plan.add(conv, conv.weight, 1)
    return None


def _entry(plan: _Plan, dg: tp.DependencyGraph, module: Any, handler: Any) -> str | None:
    """Add what reordering ``module`` needs to ``plan``; the reason it cannot be reordered otherwise."""
    output_side = dg.is_out_channel_pruning_fn(handler) and not dg.is_in_channel_pruning_fn(handler)
    if isinstance(module, ChannelPermute):
        plan.modules.add(id(module))
        plan.permutes[id(module)] = (module, handler == dg.get_pruner_of_module(module).prune_in_channels)
        return None
    if isinstance(module, nn.modules.conv._ConvNd):
        return _conv_entries(plan, module, output_side)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        for t in (module.weight, module.bias, module.running_mean, module.running_var):
            plan.add(module, t, 0)
        return None
    if isinstance(module, nn.Linear):
        plan.add(module, module.weight, 0 if output_side else 1)
        if output_side:
            plan.add(module, module.bias, 0)
        return None
    if isinstance(module, nn.PReLU):
        plan.add(module, module.weight if module.num_parameters > 1 else None, 0)
        return None
    if isinstance(module, (tp.ops._ElementWiseOp, tp.ops._ReshapeOp)):
        return None  # nothing to reorder; a non-trivial reshape shows up as a non-identity index map
    if isinstance(module, tp.ops._OutputOp):
        return "the channels reach the model output"
    return f"the channels reach a {type(module).__name__}"


def _plan(dg: tp.DependencyGraph, permute: ChannelPermute, downstream: bool) -> _Plan | str:
    """The reorderings that fold ``permute`` on one side, or why that side cannot absorb it."""
    pruner = dg.get_pruner_of_module(permute)
    fn = pruner.prune_out_channels if downstream else pruner.prune_in_channels
    channels = permute.perm.numel()
    try:
        group = bounded_group(dg.get_pruning_group, permute, fn, list(range(channels)))
    except RunawayGroup as err:
        return str(err)
    order = torch.argsort(permute.perm.cpu()) if downstream else permute.perm.cpu().clone()
    plan = _Plan(order)
    plan.modules.add(id(permute))
    for item in group:
        module = item.dep.target.module
        if module is permute:
            continue
        if list(item.idxs) != list(range(channels)) or list(item.root_idxs) != list(range(channels)):
            return f"the channels are re-indexed on the way to {type(module).__name__} (concat/split/flatten)"
        reason = _entry(plan, dg, module, item.dep.handler)
        if reason:
            return reason
    return plan


def absorb_permutes(model: nn.Module, example_inputs: torch.Tensor, *, verbose: bool = False) -> dict[str, str]:
    """Fold every foldable ``ChannelPermute`` of ``model`` into its neighbours (in place, exact).

    Args:
        model: the model; permutes it folds become ``nn.Identity`` and bare ``permute_in/conv/permute_out``
            sequentials collapse to their conv.
        example_inputs: one input batch ``(B, C, H, W)`` for tracing.
        verbose: show a progress bar over the folding rounds.

    Returns:
        ``{permute name: "absorbed" or the reason it stays}`` for every permute met (names as before folding).
    """
    status: dict[str, str] = {}
    parents: set[str] = set()
    rounds = tqdm(range(len(list(_permutes(model))) + 1), desc="absorb permutes", leave=False, disable=not verbose)
    for _ in rounds:
        pending = [(n, p) for n, p in _permutes(model) if status.get(n, "") != "absorbed"
                   and RUNAWAY not in status.get(n, "")]  # a runaway group would cost its budget again
        if not pending:
            break
        try:
            chosen = _choose(build_graph(model, example_inputs, pruners={ChannelPermute: _BoundaryPruner()}),
                             pending, status)
        except Exception as err:  # noqa: BLE001  folding is optional: a model tp cannot trace keeps its permutes
            status.update({n: f"not folded: torch-pruning could not trace the model ({err})" for n, _ in pending})
            break
        if not chosen:
            break
        for name, permute, plan in chosen:  # planned on one graph, applied together: rounds are all-or-nothing
            plan.apply()
            parents.add(name.rpartition(".")[0])
            status[name] = "absorbed"
        folded = {id(permute) for _, permute, _ in chosen}
        replace_modules(model, lambda n, m: nn.Identity(), lambda n, m: id(m) in folded)
    replace_modules(model, lambda n, m: m.conv, lambda n, m: n in parents and _bare_rewrite(m))
    return status


def _choose(dg: tp.DependencyGraph, pending: list[tuple[str, ChannelPermute]],
            status: dict[str, str]) -> list[tuple[str, ChannelPermute, _Plan]]:
    """Folds for this round touching disjoint modules; reasons for the permutes that cannot fold go to ``status``."""
    touched: set[int] = set()
    chosen = []
    for name, permute in pending:
        plan = _first_plan(dg, permute)
        if isinstance(plan, str):
            status[name] = plan
        elif not plan.modules & touched:  # overlapping folds wait for a fresh graph next round
            touched |= plan.modules
            chosen.append((name, permute, plan))
    return chosen


def _first_plan(dg: tp.DependencyGraph, permute: ChannelPermute) -> _Plan | str:
    reasons = []
    for downstream in (True, False):
        plan = _plan(dg, permute, downstream)
        if not isinstance(plan, str):
            return plan
        reasons.append(f"{'downstream' if downstream else 'upstream'}: {plan}")
    return "; ".join(reasons)


def _permutes(model: nn.Module) -> list[tuple[str, ChannelPermute]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ChannelPermute)]


def _bare_rewrite(module: nn.Module) -> bool:
    """A rewrite's Sequential whose permutes are all gone (only its conv and identities left)."""
    if type(module) is not nn.Sequential:
        return False
    children = dict(module.named_children())
    return ("conv" in children and set(children) <= _REWRITE_PARTS
            and all(isinstance(m, nn.Identity) for k, m in children.items() if k != "conv"))
