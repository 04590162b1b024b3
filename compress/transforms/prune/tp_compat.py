"""Make models traceable by torch-pruning 1.6 and build its dependency graph safely.

What torch-pruning cannot do on its own, fixed here without re-implementing it:

* torchvision's ShuffleNetV2 shuffles channels with a functional ``view``/``transpose`` that tp's reshape index
  mapping divides by zero on. :func:`swap_shufflenet_blocks` replaces each of its ``InvertedResidual`` blocks
  with :class:`ShuffleV2Block` (same submodules, a :class:`~compress.transforms.modules.ChannelShuffle` module,
  and a split sized from ``branch2`` instead of ``chunk(2)`` so unequal pruning of the halves stays valid).
* A channel shuffle or permutation reorders channels: pruning input channel ``i`` must remove the output channel
  it lands on (for a shuffle, the same position from every shuffle group). :class:`ChannelShufflePruner` /
  :class:`ChannelPermutePruner` plus explicit index-mapped dependencies (added by :func:`build_graph`) express
  exactly that in tp's own dependency graph. Where that mapping would unbalance a grouped conv, the channels are
  locked instead (:func:`compress.transforms.prune.layer_roles.locked_layers`).
* tp pairs a split's channel ranges with its consumers in tracing order, not output order:
  :func:`order_split_outputs` sorts them.
* torch records ``torch.cat(..., dim=-1)``'s dimension as ``2**64 - 1``; tp reads such a value as "uninitialised"
  and maps the concat as if it joined channels, which on torchvision's Swin-S/B (its patch merging concatenates
  along the last, feature dimension of an NHWC tensor) ends in a ``TypeError`` inside tp's graph building:
  :func:`_concat_dim_fixed` (installed on import) skips a concat along a negative dimension other than ``-3``,
  as tp itself skips one along a positive dimension other than 1. Where tp cannot infer a concat's input sizes
  (its channel inference gives up after 500 steps: timm's DPN), the same fix maps the concat so that every group
  through it fails to build, and is skipped with that reason, instead of tp's ``TypeError``.
* ``build_dependency`` needs autograd enabled and calls ``model.eval()``; :func:`build_graph` enables grad and
  restores every submodule's train/eval mode afterwards. When tp raises, the forward hooks its tracing leaves
  behind are removed and the error becomes a :class:`~compress.errors.CompressError` naming the layer
  (:func:`.where.tp_errors`).

This is the one set of tp extensions for compress' modules: pruning, dead-channel removal and the rewrites'
permute folding and producer lookup all build their graphs with :func:`build_graph`.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import sys
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import _helpers
from torch_pruning.dependency import Dependency
from torch_pruning.dependency import constants as tp_constants
from torch_pruning.dependency import index_mapping as tp_index_mapping
import torch_pruning.dependency.graph as tp_graph

from ...module_tree import set_module
from ...modes import restore_training
from ..modules import ChannelPermute, ChannelShuffle
from ...errors import CompressError
from .budget import TimeBudget, protected
from .layer_roles import layer_width
from .where import tp_errors

__all__ = ["GROUP_BUDGET_S", "RUNAWAY", "RunawayGroup", "bounded_group", "index_limit", "channel_agnostic_gates",
           "ShuffleV2Block", "swap_shufflenet_blocks", "ChannelShufflePruner", "ChannelPermutePruner",
           "shuffle_permutation", "channel_groups", "WIDTH_ATTRIBUTES", "sync_widths",
           "customized_pruners", "traceable", "link_index_maps", "order_split_outputs", "build_graph",
           "GRAPH_BUILDING", "GRAPH_HINT", "OUT_CHANNEL_FNS", "out_channel_items", "ChannelOrigins", "prune_group",
           "replay_history"]


class ShuffleV2Block(nn.Module):
    """torchvision's ShuffleNetV2 ``InvertedResidual`` with the shuffle as a module (traceable by tp).

    The stride-1 path splits its input as ``[C - c2, c2]`` with ``c2 = branch2[0].in_channels`` (equal to
    torchvision's ``chunk(2)`` before pruning), so the block stays valid when pruning shrinks the halves unequally.

    Args:
        stride: the block's stride (1 keeps half of the input as identity).
        branch1: the stride>1 shortcut branch (empty ``nn.Sequential`` when ``stride == 1``).
        branch2: the main branch; its first module is a 1x1 ``Conv2d``.
        shuffle: the channel shuffle, a :class:`ChannelPermute` or :class:`ChannelShuffle` (``groups=2``).

    Shape:
        input ``(B, C, H, W)`` -> output ``(B, C_out, H / stride, W / stride)``.
    """

    def __init__(self, stride: int, branch1: nn.Module | None = None, branch2: nn.Module | None = None,
                 shuffle: nn.Module | None = None) -> None:
        super().__init__()
        self.stride = stride
        self.branch1 = branch1 if branch1 is not None else nn.Sequential()
        self.branch2 = branch2 if branch2 is not None else nn.Sequential()
        self.shuffle = shuffle if shuffle is not None else ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            c2 = self.branch2[0].in_channels
            x1, x2 = torch.split(x, [x.shape[1] - c2, c2], dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return self.shuffle(out)


def swap_shufflenet_blocks(model: nn.Module, *, shuffle: Literal["permute", "groups"] = "permute") -> int:
    """Replace each torchvision ShuffleNetV2 ``InvertedResidual`` in ``model`` by an equivalent :class:`ShuffleV2Block`.

    The submodules (and so the weights) are moved, not copied; outputs are unchanged.

    Args:
        model: changed in place.
        shuffle: ``"permute"`` uses a :class:`ChannelPermute` holding the shuffle's permutation, so every channel
            prunes on its own; ``"groups"`` keeps a :class:`ChannelShuffle`, whose consistent pruning removes a
            position from both groups at once and so couples each stage's pass-through channels into sets that
            double per block (in practice those stay unpruned).

    Returns:
        The number of blocks replaced.
    """
    shufflenet = sys.modules.get("torchvision.models.shufflenetv2")
    if shufflenet is None:  # the model cannot hold torchvision's blocks; spare the (slow) torchvision import
        return 0
    InvertedResidual = shufflenet.InvertedResidual  # noqa: N806 - a class
    targets = [name for name, m in model.named_modules() if type(m) is InvertedResidual]
    for name in targets:
        old = model.get_submodule(name)
        channels = _block_out_channels(old)
        new_shuffle = ChannelPermute(shuffle_permutation(channels, 2)) if shuffle == "permute" else ChannelShuffle(2)
        set_module(model, name, ShuffleV2Block(old.stride, old.branch1, old.branch2, new_shuffle))
    return len(targets)


def _block_out_channels(block: nn.Module) -> int:
    convs = [m for m in block.branch2.modules() if isinstance(m, nn.Conv2d)]
    half = convs[-1].out_channels
    return 2 * half


class ChannelShufflePruner(tp.pruner.BasePruningFunc):
    """tp pruning function for :class:`ChannelShuffle`: the module has no parameters, so pruning only counts.

    ``prune_in_channels`` and ``prune_out_channels`` are different functions on purpose: tp then adds no identity
    intra-layer dependency, and :func:`build_graph` adds the two index-mapped ones (input <-> output positions).
    The channel count of each shuffle (not stored by the module) is recorded while tracing and kept current here.
    """

    TARGET_MODULES = (ChannelShuffle,)

    def __init__(self) -> None:
        super().__init__()
        self.channels: dict[nn.Module, int] = {}

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        # tp calls both functions once per group with the same (expanded) count; count it on one side only
        self.channels[layer] -= len(idxs)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int | None:
        return self.channels.get(layer)

    get_in_channels = get_out_channels

    def get_in_channel_groups(self, layer: nn.Module) -> int:
        # tp's pruner then removes the same position from every group (its channel-group mechanism), which is
        # exactly the set the index mapping couples; otherwise each root channel would drag g channels along
        return layer.groups

    get_out_channel_groups = get_in_channel_groups


def shuffle_permutation(channels: int, groups: int) -> torch.Tensor:
    """Index ``perm`` with ``shuffle(x)[:, j] == x[:, perm[j]]`` for :class:`ChannelShuffle` ``(groups)``.

    Returns:
        Long tensor of shape ``(channels,)``.
    """
    j = torch.arange(channels)
    return (j % groups) * (channels // groups) + j // groups


class _ShuffleIndexMapping:
    """Maps pruned indices across a channel shuffle, expanding each to its position in every group.

    Input channel ``i = a * (C // g) + b`` lands at output ``b * g + a``; removing it alone would break the
    shuffle's block structure, so position ``b`` is removed from all ``g`` groups.
    """

    def __init__(self, pruner: ChannelShufflePruner, module: ChannelShuffle, to_output: bool) -> None:
        self.pruner, self.module, self.to_output = pruner, module, to_output

    def __call__(self, idxs: list) -> list:
        groups = self.module.groups
        per_group = self.pruner.channels[self.module] // groups
        out: dict[int, Any] = {}
        for h in idxs:
            position = h.idx % per_group if self.to_output else h.idx // groups
            for a in range(groups):
                new = position * groups + a if self.to_output else a * per_group + position
                out.setdefault(new, h.root_idx)  # one entry per channel: tp does not merge duplicates here
        return [_helpers._HybridIndex(idx=i, root_idx=r) for i, r in sorted(out.items())]


class ChannelPermutePruner(tp.pruner.BasePruningFunc):
    """tp pruning function for :class:`ChannelPermute`: removing output channels re-ranks the permutation.

    As for :class:`ChannelShufflePruner`, input and output pruning are distinct functions linked by index-mapped
    dependencies (output ``j`` reads input ``perm[j]``); each channel prunes independently.
    """

    TARGET_MODULES = (ChannelPermute,)

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = torch.ones(layer.perm.numel(), dtype=torch.bool, device=layer.perm.device)
        keep[list(idxs)] = False
        kept_inputs = layer.perm[keep]
        # the kept inputs are renumbered 0..n-1 in their original order
        layer.perm = torch.argsort(torch.argsort(kept_inputs))
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        return layer  # done by prune_out_channels, which tp calls with the matching output indices

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.perm.numel()

    get_in_channels = get_out_channels


class _PermuteIndexMapping:
    """Maps pruned indices across a :class:`ChannelPermute` (one to one)."""

    def __init__(self, module: ChannelPermute, to_output: bool) -> None:
        self.module, self.to_output = module, to_output

    def __call__(self, idxs: list) -> list:
        perm = self.module.perm.tolist()
        table = {i: j for j, i in enumerate(perm)} if self.to_output else dict(enumerate(perm))
        return sorted((_helpers._HybridIndex(idx=table[h.idx], root_idx=h.root_idx) for h in idxs),
                      key=lambda h: h.idx)


@functools.cache
def _gain_convs() -> tuple[type, ...]:
    """Conv types with a per-output-channel ``gain`` parameter that tp's conv pruner leaves at the old width
    (timm's ``ScaledStdConv2d``: the weight-standardised conv of the NF nets, whose standardisation then fails:
    "weight should contain 358 elements not 512"); :func:`prune_group` prunes it with the weight."""
    try:
        from timm.layers import ScaledStdConv2d, ScaledStdConv2dSame
    except ImportError:
        return ()
    return (ScaledStdConv2d, ScaledStdConv2dSame)


def customized_pruners() -> dict[type, tp.pruner.BasePruningFunc]:
    """Fresh tp pruning functions for compress' own modules (fresh: they hold per-graph channel counts)."""
    return {ChannelShuffle: ChannelShufflePruner(), ChannelPermute: ChannelPermutePruner()}


def channel_agnostic_gates() -> tuple[type, ...]:
    """Module types that scale each channel by a gate computed *across* channels with no parameter sized by the
    channel count: ECA (timm's ``EcaModule`` / ``CecaModule``: a 1-D conv over the pooled channel vector). They
    work unchanged at any width, so pruning never touches them; but tp traces their view-as-sequence conv and
    couples every channel with its neighbours through index maps, which on timm's ECA-ResNets took longer than
    the prune time budget (ecaresnet26t at 64 px: torch-pruning alone 154 s, compress stopped at 120 s)."""
    try:
        from timm.layers import CecaModule, EcaModule
    except ImportError:
        return ()
    return (EcaModule, CecaModule)


@contextlib.contextmanager
def traceable(model: nn.Module, pruners: Mapping[type, tp.pruner.BasePruningFunc] | None = None) -> Iterator[None]:
    """While active, tp can trace ``model``: grad on (frozen parameters too), modes restored, shuffles as one op.

    A forward hook swaps each :class:`ChannelShuffle` output for the identical ``index_select`` of its input, so
    autograd links the shuffle directly to its producer (tp would otherwise trace the internal view/transpose)
    and records the channel count for :class:`ChannelShufflePruner`. Likewise each :func:`channel_agnostic_gates`
    module's output is replaced by the same values linked to its input by element-wise ops only: tp sees the
    channels pass through, not the gate's internals; and a weight-standardised conv (:func:`_gain_convs`)
    returns the plain conv of its raw weight, so tp sees one conv, not the standardisation of its weight.
    """
    shuffle_pruner = (pruners or {}).get(ChannelShuffle)

    def hook(module: ChannelShuffle, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        shuffle_pruner.channels[module] = x.shape[1]
        return x.index_select(1, shuffle_permutation(x.shape[1], module.groups).to(x.device))

    def gate_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        return output.detach() + (x - x.detach())  # the same values; autograd sees x passed through

    def plain_conv_hook(module: nn.Conv2d, args: tuple, output: torch.Tensor) -> torch.Tensor:
        # the same conv on the raw weight: tp traces x -> conv, not the weight standardisation's reshape /
        # batch_norm (which it would take for a path of data through the conv's input channels)
        x = args[0]
        if getattr(module, "same_pad", False):  # ScaledStdConv2dSame pads dynamically, then convs unpadded
            from timm.layers import pad_same

            x = pad_same(x, module.kernel_size, module.stride, module.dilation)
        return torch.nn.functional.conv2d(x, module.weight, module.bias, module.stride, module.padding,
                                          module.dilation, module.groups)

    gates, gain_convs = channel_agnostic_gates(), _gain_convs()
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if shuffle_pruner is not None and isinstance(m, ChannelShuffle)]
    handles += [m.register_forward_hook(gate_hook) for m in model.modules() if gates and isinstance(m, gates)]
    handles += [m.register_forward_hook(plain_conv_hook) for m in model.modules()
                if gain_convs and isinstance(m, gain_convs)]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    hooks_before = {m: set(m._forward_hooks) for m in model.modules()}
    try:
        for p in frozen:  # tp traces autograd: a frozen layer would leave no grad_fn to trace
            p.requires_grad_(True)
        with torch.enable_grad(), restore_training(model):
            yield
    finally:
        with protected():
            for p in frozen:
                p.requires_grad_(False)
            for h in handles:
                h.remove()
            _remove_new_hooks(hooks_before)


def _remove_new_hooks(before: Mapping[nn.Module, set]) -> None:
    """Remove the forward hooks added since ``before`` (tp's tracing leaves its own behind when it raises)."""
    for m, ids in before.items():
        for hook_id in [k for k in m._forward_hooks if k not in ids]:
            del m._forward_hooks[hook_id]
            m._forward_hooks_with_kwargs.pop(hook_id, None)
            m._forward_hooks_always_called.pop(hook_id, None)


def link_index_maps(graph: "tp.DependencyGraph") -> None:
    """Add the index-mapped input<->output dependencies of every shuffle / permute module traced in ``graph``.

    Only modules handled by :class:`ChannelShufflePruner` / :class:`ChannelPermutePruner` are linked; a module
    registered with another pruner (e.g. a boundary that decouples its two sides) is left as it is.
    """
    for module, node in graph.module2node.items():
        pruner = graph.get_pruner_of_module(module)
        if isinstance(pruner, ChannelShufflePruner):
            forward, backward = (_ShuffleIndexMapping(pruner, module, to_output=flag) for flag in (True, False))
        elif isinstance(pruner, ChannelPermutePruner):
            forward, backward = (_PermuteIndexMapping(module, to_output=flag) for flag in (True, False))
        else:
            continue
        fwd = Dependency(pruner.prune_in_channels, pruner.prune_out_channels, source=node, target=node)
        fwd.index_mapping[0] = forward
        back = Dependency(pruner.prune_out_channels, pruner.prune_in_channels, source=node, target=node)
        back.index_mapping[0] = backward
        node.dependencies.extend([fwd, back])


class _Unsized:
    """Index map of a concat whose input sizes tp could not infer: any group through it fails to build (and the
    guard skips it with this reason) instead of being mapped to the wrong channels."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, idxs: Any) -> Any:
        raise CompressError(f"torch-pruning could not infer the input sizes of concat {self.name} (its channel "
                            f"inference gives up after {tp_constants.MAX_RECURSION_DEPTH} steps)")


def _concat_dim_fixed(update: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """tp's ``update_concat_index_mapping``, fixed: a concat along a negative dimension other than ``-3`` (the
    channels of an NCHW tensor) gets no channel index maps, like one along a positive dimension other than 1; a
    concat whose input sizes tp cannot infer gets :class:`_Unsized` maps instead of tp's ``TypeError``."""
    if getattr(update, "compress_fixed", False):
        return update

    def fixed(graph: Any, cat_node: Any) -> None:
        dim = getattr(cat_node.grad_fn, "_saved_dim", None)
        if isinstance(dim, int) and dim >= 2 ** 63 and dim - 2 ** 64 != -3:  # a negative dim, read unsigned
            return None
        try:
            return update(graph, cat_node)
        except TypeError:
            if None not in (getattr(cat_node.module, "concat_sizes", None) or ()):
                raise
        unsized = _Unsized(getattr(cat_node, "name", "?"))
        for dep in cat_node.dependencies:
            if any(dep.target is n for n in cat_node.inputs):
                dep.index_mapping[1] = unsized
        for node in cat_node.inputs:
            for dep in node.dependencies:
                if dep.target is cat_node:
                    dep.index_mapping[1] = unsized
        return None

    fixed.compress_fixed = True  # type: ignore[attr-defined]
    return fixed


tp_index_mapping.update_concat_index_mapping = _concat_dim_fixed(tp_index_mapping.update_concat_index_mapping)


def order_split_outputs(graph: "tp.DependencyGraph") -> None:
    """Order every split node's outputs by the split output they read (tp 1.6 keeps its tracing order).

    tp maps split ``i``'s channel range to ``node.outputs[i]``, but lists the outputs in the order its backward
    traversal met them: with ``a(x1), b(x2)`` concatenated, ``b`` may come first and then pruning ``x1``'s
    channels removes ``b``'s inputs, silently. Each output's autograd node names the split output it reads
    (``output_nr``); outputs for which none is found keep their place after the others.
    """
    for node in graph.module2node.values():
        if node.type != tp.ops.OPTYPE.SPLIT or node.grad_fn is None:
            continue

        def read(out: Any, split: Any = node) -> int:
            nrs = [nr for fn, nr in getattr(out.grad_fn, "next_functions", ()) if fn is split.grad_fn]
            return min(nrs) if nrs else len(split.outputs)

        node.outputs.sort(key=read)  # stable


GROUP_BUDGET_S = 2.0  # seconds torch-pruning may take to build one group (legitimate ones take milliseconds)
RUNAWAY = "torch-pruning did not finish building the group"  # starts the reason of a RunawayGroup


class RunawayGroup(CompressError):
    """torch-pruning did not finish building a group within :data:`GROUP_BUDGET_S`."""


def index_limit(graph: Any) -> int | None:
    """The most indices a legitimate group item of ``graph`` can hold: the largest dimension of any parameter or
    buffer of the graph's model (cached on the graph; pruning only lowers it). ``None`` for an unknown graph."""
    model = getattr(graph, "model", None)
    if not isinstance(model, nn.Module):
        return None
    limit = getattr(graph, "_compress_index_limit", None)
    if limit is None:
        limit = max((max(t.shape) for t in itertools.chain(model.parameters(), model.buffers()) if t.dim()),
                    default=0)
        graph._compress_index_limit = limit
    return limit


@contextlib.contextmanager
def _index_lists_within(limit: int | None) -> Iterator[None]:
    """While active, a group torch-pruning creates raises :class:`RunawayGroup` as soon as one of its items gets
    more than ``limit`` indices, or a flatten map is asked to build more than ``limit`` (checked from the lengths,
    before building a list that alone can take a second). tp's indices of one tensor dimension are distinct and
    below its size, so a longer list is a cycle growing it: measured on Swin-V2 and timm's GC nets, it passes 4x
    the limit within 0.3-0.5 s, where a legitimate group never exceeds it."""
    if limit is None:
        yield
        return

    def runaway(length: int) -> RunawayGroup:
        return RunawayGroup(f"{RUNAWAY}: an index list grew to {length} entries, past the largest dimension of "
                            f"the model ({limit}; its index maps grow on every turn of a cycle)")

    base = tp_graph.Group

    class Bounded(base):  # type: ignore[misc, valid-type]
        def add_dep(self, dep: Any, idxs: Any) -> None:
            if len(idxs) > limit:
                raise runaway(len(idxs))
            super().add_dep(dep, idxs)

    flatten = tp_index_mapping._FlattenIndexMapping
    expand = flatten.__call__

    def bounded_expand(self: Any, idxs: Any) -> Any:
        # a flatten map turns each channel into `stride` features: checked before the list is built, since one
        # turn of timm's global-context cycle asks for C * C entries (1.5 M on gc_efficientnetv2_rw_t, ~1 s)
        if not self.reverse and len(idxs) * self._stride > limit:
            raise runaway(len(idxs) * self._stride)
        return expand(self, idxs)

    tp_graph.Group, flatten.__call__ = Bounded, bounded_expand
    try:
        yield
    finally:
        tp_graph.Group, flatten.__call__ = base, expand


def bounded_group(get_group: Callable[..., Any], module: nn.Module, pruning_fn: Any, idxs: Any) -> Any:
    """``get_group(module, pruning_fn, idxs)`` (a graph's ``get_pruning_group``, bound to the graph) within
    :data:`GROUP_BUDGET_S`, and with no index list longer than :func:`index_limit` of that graph.

    tp's index maps can feed each other in a cycle, its index lists growing on every turn (timm's global-context
    blocks, Swin, MaxViT): the construction then never ends. The length bound stops it early; the time budget
    stops what the bound cannot see (it runs in pure Python).

    Raises:
        RunawayGroup: an index list outgrew the model, or the budget ran out (the group stays unbuilt).
    """
    budget = TimeBudget(GROUP_BUDGET_S, what="building the group")
    try:
        with _index_lists_within(index_limit(getattr(get_group, "__self__", None))):
            return budget.run(get_group, module, pruning_fn, idxs)
    except RunawayGroup:
        raise
    except CompressError:
        if budget.expired:
            raise RunawayGroup(f"{RUNAWAY} in {GROUP_BUDGET_S} s (its index maps grow on every turn of a "
                               "cycle)") from None
        raise


GRAPH_BUILDING = "building torch-pruning's dependency graph"  # starts the message of a tp failure while tracing
GRAPH_HINT = "torch-pruning 1.6 cannot trace this part of the architecture (replace that block, or do not prune it)"

OUT_CHANNEL_FNS = (tp.prune_conv_out_channels, tp.prune_depthwise_conv_out_channels, tp.prune_linear_out_channels)


def out_channel_items(group: Any, names: Mapping[nn.Module, str]) -> Iterator[tuple[Any, str]]:
    """The items of a tp group that remove output channels of a named conv / linear, with the layer's name."""
    for item in group:
        module = item.dep.target.module
        if isinstance(module, (nn.Conv2d, nn.Linear)) and item.dep.handler in OUT_CHANNEL_FNS and module in names:
            yield item, names[module]


class ChannelOrigins:
    """For every conv / linear (by qualified name), the original index of each current output channel.

    Analysis results are numbered in the original model; pruning renumbers channels. :meth:`record` follows
    each pruned tp group, so ``original(name)[i]`` is the original index of current channel ``i``.
    """

    def __init__(self, model: nn.Module) -> None:
        self.index: dict[str, torch.Tensor] = {}
        for name, m in model.named_modules():
            width = layer_width(m)
            if width:
                self.index[name] = torch.arange(width)
        self.initial = {name: int(t.numel()) for name, t in self.index.items()}

    def original(self, name: str) -> torch.Tensor:
        """Original indices of the current channels of ``name``, shape ``(C_now,)``."""
        return self.index[name]

    def current(self, name: str, original: int) -> int | None:
        """The current index of original channel ``original`` of ``name``, or ``None`` once it is pruned."""
        hits = (self.index[name] == original).nonzero()
        return int(hits[0, 0]) if hits.numel() else None

    def record(self, group: Any, names: Mapping[nn.Module, str]) -> None:
        """Update the numbering for a tp group that is about to be (or was just) pruned, given its own indices."""
        for item, name in out_channel_items(group, names):
            if name not in self.index:
                continue
            keep = torch.ones(self.index[name].numel(), dtype=torch.bool)
            keep[list(item.idxs)] = False
            self.index[name] = self.index[name][keep]

    def copy(self) -> "ChannelOrigins":
        new = object.__new__(ChannelOrigins)
        new.index, new.initial = dict(self.index), dict(self.initial)
        return new


def channel_groups(model: nn.Module) -> dict[nn.Module, int]:
    """tp's ``out_channel_groups`` for layers tp does not know to group: each ``nn.MultiheadAttention`` with its
    heads, so a group through it removes the same positions of every head and ``embed_dim`` stays a multiple of
    them.

    (Not tp's ``num_heads``: with it, tp 1.6 re-roots attention groups at a downstream layer, finds none in
    torchvision's ViT and leaves the residual stream unpruned.)
    """
    return {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}


def _vit_hidden_dim(model: nn.Module) -> None:
    from torchvision.models.vision_transformer import VisionTransformer

    for m in model.modules():
        if isinstance(m, VisionTransformer):
            m.hidden_dim = m.conv_proj.out_channels


def _mixed_conv_splits(model: nn.Module) -> None:
    try:
        from timm.layers.mixed_conv2d import MixedConv2d
    except ImportError:  # timm is optional
        return
    for m in model.modules():
        if isinstance(m, MixedConv2d):
            m.splits = [conv.in_channels for conv in m.values()]
            m.in_channels, m.out_channels = sum(m.splits), sum(conv.out_channels for conv in m.values())


# Models that keep a pruned width as a plain attribute their forward reads, and how to bring it up to date after a
# group is pruned (tp updates modules' own fields only): torchvision's ViT reshapes its patch embedding with
# ``self.hidden_dim``; timm's MixedConv2d (MixNet) splits its input by its own ``splits``.
WIDTH_ATTRIBUTES: tuple[Callable[[nn.Module], None], ...] = (_vit_hidden_dim, _mixed_conv_splits)


def sync_widths(model: nn.Module) -> None:
    """Bring every :data:`WIDTH_ATTRIBUTES` attribute of ``model`` up to date with its layers (idempotent: also
    after a rolled-back group, whose snapshot does not hold these attributes)."""
    for update in WIDTH_ATTRIBUTES:
        update(model)


def prune_group(graph: "tp.DependencyGraph", group: Any) -> None:
    """``group.prune()``, then refresh the split offsets tp 1.6 leaves stale.

    tp's ``SplitPruner`` updates a split's ``split_sizes`` but writes the new offsets to itself instead of the
    split node, and the index mapping of every later group reads the node's offsets: without this refresh a
    second group through the same ``torch.split`` maps to the wrong channels. The ``gain`` of a weight-standardised
    conv (:func:`_gain_convs`) loses the same output channels as its weight; the width attributes of
    :data:`WIDTH_ATTRIBUTES` are brought up to date.
    """
    gain_convs = _gain_convs()
    gains = [(dep.target.module, set(idxs)) for dep, idxs in group
             if gain_convs and isinstance(dep.target.module, gain_convs) and dep.handler in OUT_CHANNEL_FNS]
    widths = [conv.out_channels for conv, _ in gains]
    group.prune()
    for (conv, removed), width in zip(gains, widths):
        keep = [i for i in range(width) if i not in removed]
        conv.gain = graph.get_pruner_of_module(conv)._prune_parameter_and_grad(conv.gain, keep, 0)
    sync_widths(graph.model)
    for node in graph.module2node.values():
        sizes = getattr(node.module, "split_sizes", None) if node.type == tp.ops.OPTYPE.SPLIT else None
        if sizes is not None:
            node.module.offsets = [0, *itertools.accumulate(sizes)]


def replay_history(graph: "tp.DependencyGraph", history: list, *,
                   prune: Callable[["tp.DependencyGraph", Any], bool | None] = prune_group) -> list:
    """Apply tp's pruning history (``[(root_name, is_output_pruning, idxs), ...]``) to ``graph``'s model.

    tp's own ``load_pruning_history`` without the stale split offsets (see :func:`prune_group`).

    Args:
        prune: prunes one group, ``(graph, group)``; returns ``False`` when it left the group unpruned (e.g.
            :meth:`compress.transforms.prune.guard.GroupGuard.prune`).

    Returns:
        The groups pruned.
    """
    done = []
    for name, is_output, idxs in history:
        module = graph.model.get_submodule(name)
        pruner = graph.get_pruner_of_module(module)
        fn = pruner.prune_out_channels if is_output else pruner.prune_in_channels
        group = graph.get_pruning_group(module, fn, idxs)
        if prune(graph, group) is not False:
            done.append(group)
    return done


def build_graph(model: nn.Module, example_inputs: torch.Tensor, *,
                pruners: Mapping[type, tp.pruner.BasePruningFunc] | None = None) -> "tp.DependencyGraph":
    """tp's ``DependencyGraph`` of ``model`` with compress' modules handled (grad enabled, modes restored).

    Args:
        model: the network; not modified.
        example_inputs: a batch for tracing, e.g. shape ``(1, C, H, W)``.
        pruners: tp pruning functions replacing those of :func:`customized_pruners` for some module types
            (e.g. a boundary pruner that decouples a permute's two sides to find the groups on each side).

    Raises:
        CompressError: tp failed (the message names the layer where it can be found, see :mod:`.where`).
    """
    pruners = {**customized_pruners(), **(pruners or {})}
    with tp_errors(model, GRAPH_BUILDING, hint=GRAPH_HINT), traceable(model, pruners):
        graph = tp.DependencyGraph().build_dependency(model, example_inputs, customized_pruners=pruners,
                                                      verbose=False)
    order_split_outputs(graph)
    link_index_maps(graph)
    return graph
