"""torch-pruning support for the channel-reordering modules (``ChannelShuffle``, ``ChannelPermute``).

torch-pruning couples a layer's input and output channels one to one (index ``i`` in, index ``i`` out). A
shuffle or permutation breaks that: pruning input channel ``i`` must remove output channel ``perm^-1[i]``, and
behind a shuffle the next grouped conv would lose channels unevenly across its groups, which its grouped
pruning cannot express. So channels that pass through these modules are *locked*:

* :class:`ChannelShufflePruner` / :class:`ChannelPermutePruner` make the modules known, opaque nodes of the
  dependency graph (their internal ``view``/``transpose``/``index_select`` are not traced as layers). Any attempt
  to prune through them raises :class:`CompressError` instead of silently mis-pairing channels.
* :func:`locked_layers` lists the layers whose output channels reach such a module (and the producers of a
  channel-multiplier depthwise conv's inputs, which torch-pruning cannot prune either); passing them as
  ``ignored_layers`` keeps torch-pruning away from those channel groups (everything else, including the
  grouped convs' other side, stays prunable with torch-pruning's usual group-consistent rules).

:func:`register_shuffle_pruner` does both for a dict of pruner/DependencyGraph keyword arguments.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
import torch_pruning as tp
from torch import nn

from ..errors import CompressError
from .modules import ChannelPermute, ChannelShuffle

__all__ = ["ChannelShufflePruner", "ChannelPermutePruner", "reorder_pruners", "locked_layers",
           "register_shuffle_pruner", "build_graph", "note_channels"]


class _LockedPruner(tp.pruner.BasePruningFunc):
    """A channel-preserving module whose channels must not be pruned (in/out coupled, same count)."""

    TARGET_MODULES = (ChannelShuffle, ChannelPermute)

    def __init__(self, pruning_dim: int = 1) -> None:
        super().__init__(pruning_dim)
        self.channels: dict[int, int] = {}  # id(module) -> channel count, noted from a forward pass

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        if len(idxs) == 0:
            return layer
        raise CompressError(
            f"cannot prune channels through {type(layer).__name__}: it reorders channels, so torch-pruning's "
            "one-to-one channel coupling would mis-pair them; pass "
            "compress.transforms.reorder.locked_layers(model, example_inputs) as ignored_layers")

    prune_in_channels = prune_out_channels  # in and out are coupled: one group on both sides

    def get_out_channels(self, layer: nn.Module) -> int | None:
        return self.channels.get(id(layer))

    get_in_channels = get_out_channels


class ChannelShufflePruner(_LockedPruner):
    """torch-pruning pruner for :class:`ChannelShuffle`: an opaque, locked node (see module docstring)."""

    TARGET_MODULES = ChannelShuffle


class ChannelPermutePruner(_LockedPruner):
    """torch-pruning pruner for :class:`ChannelPermute`: an opaque, locked node (see module docstring)."""

    TARGET_MODULES = ChannelPermute

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.perm.numel()

    get_in_channels = get_out_channels


def reorder_pruners() -> dict[type, tp.pruner.BasePruningFunc]:
    """Fresh ``customized_pruners`` entries for both reordering modules."""
    return {ChannelShuffle: ChannelShufflePruner(), ChannelPermute: ChannelPermutePruner()}


def note_channels(pruners: dict[type, Any], model: nn.Module, example_inputs: Any) -> None:
    """Record each ``ChannelShuffle``'s channel count in its pruner (the module does not store it; torch-pruning's
    shape inference asks for it). Runs one no-grad forward; call it with the model in eval mode."""
    pruner = pruners.get(ChannelShuffle)
    if not isinstance(pruner, _LockedPruner):
        return

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        pruner.channels[id(module)] = out.shape[1]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, ChannelShuffle)]
    try:
        with torch.no_grad():
            model(example_inputs)
    finally:
        for h in handles:
            h.remove()


def _multiplier_depthwise(m: nn.Module) -> bool:
    """A depthwise conv with channel multiplier > 1 (``groups == in_channels < out_channels``)."""
    return (isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1 and m.out_channels != m.in_channels)


def locked_layers(model: nn.Module, example_inputs: torch.Tensor) -> list[nn.Module]:
    """Layers whose output channels torch-pruning must leave alone in a rewritten model (its ``ignored_layers``).

    Two kinds of channels are locked:

    * channels through a ``ChannelShuffle``/``ChannelPermute`` (see the module docstring);
    * the inputs of a depthwise conv with channel multiplier ``T > 1`` (the separable rewrite's
      ``Conv2d(M, M*T, groups=M)``): torch-pruning 1.6 cannot prune them (its importance code indexes a
      weight axis of size 1). Their *outputs* stay prunable (``T`` shrinks evenly per channel).

    Builds a torch-pruning dependency graph (grad is enabled temporarily; training flags are restored) and
    collects every module whose output channels are coupled with locked channels.

    Args:
        model: the model (not modified).
        example_inputs: one input batch ``(B, C, H, W)``.

    Returns:
        The modules, without duplicates; empty when nothing is locked.
    """
    reorders = [m for m in model.modules() if isinstance(m, (ChannelShuffle, ChannelPermute))]
    multipliers = [m for m in model.modules() if _multiplier_depthwise(m)]
    if not reorders and not multipliers:
        return []
    dg = build_graph(model, example_inputs)
    roots = [(m, dg.get_pruner_of_module(m).prune_out_channels) for m in reorders]
    roots += [(m, dg.get_pruner_of_module(m).prune_in_channels) for m in multipliers]
    own = {id(m) for m in model.modules()}
    found: dict[int, nn.Module] = {}
    for module, fn in roots:
        channels = dg.get_in_channels(module) if module in multipliers else dg.get_out_channels(module)
        for dep, _ in dg.get_pruning_group(module, fn, list(range(channels))):
            target = dep.target.module
            if id(target) in own and target not in reorders and dg.is_out_channel_pruning_fn(dep.handler):
                found[id(target)] = target
    return list(found.values())


def build_graph(model: nn.Module, example_inputs: torch.Tensor,
                pruners: dict[type, Any] | None = None) -> tp.DependencyGraph:
    """A torch-pruning dependency graph of ``model`` with the reordering modules registered.

    torch-pruning traces through autograd and switches the model to eval mode; here gradients are enabled,
    parameters temporarily require grad, and every module's training flag is restored afterwards.

    Args:
        model: the model (not modified).
        example_inputs: one input batch ``(B, C, H, W)``.
        pruners: customized pruners to use instead of :func:`reorder_pruners` (same keys).
    """
    pruners = {**reorder_pruners(), **(pruners or {})}
    frozen = [p for p in model.parameters() if not p.requires_grad]
    with _eval_mode(model):  # no BatchNorm statistics change during the tracing forwards
        note_channels(pruners, model, example_inputs)
        try:
            for p in frozen:
                p.requires_grad_(True)
            with torch.enable_grad():
                return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs,
                                                             customized_pruners=pruners, verbose=False)
        finally:
            for p in frozen:
                p.requires_grad_(False)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside; every submodule's own training flag restored on exit."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def register_shuffle_pruner(dg_kwargs: dict[str, Any], model: nn.Module | None = None,
                            example_inputs: torch.Tensor | None = None) -> dict[str, Any]:
    """Add the reordering modules' pruners (and, given a model, its locked layers) to pruner keyword arguments.

    Args:
        dg_kwargs: keyword arguments for ``tp.pruner.MagnitudePruner(...)`` or ``DependencyGraph
            .build_dependency(...)``; updated in place: ``customized_pruners`` gains entries for
            ``ChannelShuffle`` and ``ChannelPermute``; with ``model`` and ``example_inputs`` given,
            ``ignored_layers`` gains :func:`locked_layers`.
        model / example_inputs: the model about to be pruned and one input batch.

    Returns:
        ``dg_kwargs`` (for chaining).
    """
    pruners = {**reorder_pruners(), **(dg_kwargs.get("customized_pruners") or {})}
    dg_kwargs["customized_pruners"] = pruners
    if model is not None and example_inputs is not None:
        with _eval_mode(model):
            note_channels(pruners, model, example_inputs)
        ignored = list(dg_kwargs.get("ignored_layers") or [])
        known = {id(m) for m in ignored}
        ignored += [m for m in locked_layers(model, example_inputs) if id(m) not in known]
        dg_kwargs["ignored_layers"] = ignored
    return dg_kwargs
