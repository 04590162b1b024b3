"""Guarded group pruning: a torch-pruning group that raises, or leaves a broken model, is rolled back and skipped.

torch-pruning 1.6 mis-handles some blocks that split, concatenate or mix kernel sizes (timm's Res2Net,
CSPNet, MixNet ...): computing a group's importance raises, pruning raises half-way, or pruning succeeds but
the model no longer runs (a module that keeps its own split sizes). :class:`GroupGuard` prunes one group at a
time:

1. it snapshots exactly what pruning a group changes (:class:`Snapshot`): every module and graph node in the
   group (parameters and buffers copied, their gradients too, and their plain attributes such as
   ``out_channels``, ``num_features``, ``groups``, a split's ``split_sizes`` and ``offsets``), the parent module
   of an unwrapped parameter, tp's pruning functions (a split pruner keeps offsets) and the graph's own
   bookkeeping (parameter names, node map, pruning history);
2. prunes the group (:func:`.tp_compat.prune_group`);
3. checks the model: one eval-mode forward pass on the example input must run, be finite and have the output
   shape it had before;
4. on any failure restores the snapshot exactly (parameters bit-identical) and records a :class:`SkippedGroup`.

:meth:`GroupGuard.prune_all` runs step 3 once per :data:`CHECK_EVERY` groups and replays a batch whose check
fails one group at a time, with the same outcome as checking after every group.

:meth:`GroupGuard.watch` extends this to a tp ``BasePruner``: a group whose construction or importance raises is
skipped too, and the pruner carries on with the other groups. A group whose construction does not finish within
:data:`~.tp_compat.GROUP_BUDGET_S` (tp's index maps can loop, growing the index lists on every turn: timm's
global-context blocks, Swin, MaxViT) is skipped as well, and the layers it had reached are not tried as roots
again.
"""
from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch_pruning as tp
from torch import nn
import torch_pruning.dependency.graph as tp_graph
from torch_pruning.dependency import Dependency, Group

from .budget import protected
from .dead import model_outputs
from .tp_compat import RunawayGroup, bounded_group, prune_group, sync_widths
from .where import describe_error, module_names

__all__ = ["SkippedGroup", "Snapshot", "GroupGuard", "model_objects", "CHECK_EVERY"]

LOG = logging.getLogger(__name__)

@dataclass(frozen=True)
class SkippedGroup:
    """A channel group left unpruned.

    Attributes:
        root: qualified name of the group's root layer (the conv / linear whose output channels define it).
        reason: what went wrong (the exception with where it was raised, or the failed check).
    """

    root: str
    reason: str


def _copy_tensor(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    grad = t.grad.detach().clone() if isinstance(t, nn.Parameter) and t.grad is not None else None
    return t, t.detach().clone(), grad


def _restore_tensor(saved: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]) -> None:
    t, data, grad = saved
    t.data = data
    if isinstance(t, nn.Parameter):
        t.grad = grad


def _copy_value(value: Any) -> Any:
    """A shallow copy of a container's contents (restored into the same container object), else ``None``."""
    return copy.copy(value) if isinstance(value, (list, dict, set)) else None


def _restore_value(value: Any, contents: Any) -> None:
    if isinstance(value, list):
        value[:] = contents
    elif isinstance(value, (dict, set)):
        value.clear()
        value.update(contents)


class Snapshot:
    """The state of some objects, restorable exactly: their attributes, and for modules their tensors.

    Modules: ``_parameters`` and ``_buffers`` (the same tensor objects come back, holding copies of their data and
    gradients) and every other attribute but submodules. Tensors (unwrapped parameters): data and gradient.
    Other objects (graph nodes, tp's pruning functions, the graph): their attributes. Containers held in
    attributes (lists, dicts, sets: ``split_sizes``, hook dicts) come back as the same objects with their old
    contents, so references to them stay valid.
    """

    def __init__(self, objects: Iterable[Any]) -> None:
        self._tensors: list[tuple] = []
        self._attrs: list[tuple[Any, dict[str, tuple[Any, Any]]]] = []
        seen: set[int] = set()
        for obj in objects:
            if obj is None or id(obj) in seen:
                continue
            seen.add(id(obj))
            if isinstance(obj, torch.Tensor):
                self._tensors.append(_copy_tensor(obj))
                continue
            if isinstance(obj, nn.Module):
                for t in (*obj._parameters.values(), *obj._buffers.values()):
                    if t is not None and id(t) not in seen:
                        seen.add(id(t))
                        self._tensors.append(_copy_tensor(t))
            attrs = {k: (v, _copy_value(v)) for k, v in vars(obj).items() if k != "_modules"}
            self._attrs.append((obj, attrs))

    def restore(self) -> None:
        """Put every object back as it was when the snapshot was taken."""
        with protected():
            for obj, attrs in self._attrs:
                state = vars(obj)
                for key in [k for k in state if k not in attrs and k != "_modules"]:
                    del state[key]
                for key, (value, contents) in attrs.items():
                    _restore_value(value, contents)
                    state[key] = value
            for saved in self._tensors:
                _restore_tensor(saved)


def model_objects(graph: tp.DependencyGraph, *extra: Any) -> list[Any]:
    """Everything pruning any group of ``graph`` may change: its model's modules, every graph node, tp's
    pruning functions and the graph itself (plus ``extra`` objects, e.g. a :class:`.tp_compat.ChannelOrigins`)."""
    return [graph, *graph.REGISTERED_PRUNERS.values(), *graph.CUSTOMIZED_PRUNERS.values(),
            *graph.module2node.values(), *graph.model.modules(), *extra]


def _group_objects(graph: tp.DependencyGraph, group: Group) -> list[Any]:
    """Everything pruning ``group`` may change (see the module docstring)."""
    objects: list[Any] = [graph, *graph.REGISTERED_PRUNERS.values(), *graph.CUSTOMIZED_PRUNERS.values()]
    for item in group:
        for node in (item.dep.source, item.dep.target):
            # a module's pruner may also cut its children (nn.MultiheadAttention's out_proj): snapshot them too
            objects += [node, *(node.module.modules() if isinstance(node.module, nn.Module) else [node.module])]
            if isinstance(node.module, nn.Parameter):  # tp replaces an unwrapped parameter on its parent
                path = graph._param_to_name.get(node.module, "")
                objects.append(graph.model.get_submodule(path.rpartition(".")[0]))
    return objects


@contextlib.contextmanager
def _recorded_groups() -> Any:
    """The :class:`Group` objects torch-pruning's graph code creates inside the block, in order (the first one a
    ``get_pruning_group`` call makes is the group it is building)."""
    made: list[Group] = []

    class Recorded(Group):
        def __init__(self) -> None:
            super().__init__()
            made.append(self)

    saved, tp_graph.Group = tp_graph.Group, Recorded
    try:
        yield made
    finally:
        tp_graph.Group = saved


CHECK_EVERY = 8  # groups pruned between two check forward passes (a failed check replays them one by one)


class GroupGuard:
    """Prunes torch-pruning groups of ``model`` one at a time, rolling back and skipping the ones that fail.

    Args:
        model: the model the groups belong to.
        example_inputs: a batch ``(B, C, H, W)`` for the check forward pass.
        check: run the check forward pass after each group (off: only exceptions are caught, e.g. when replaying
            groups already checked on an identical copy).

        runaway: root layer name -> reason, for groups whose construction ran past
            :data:`~.tp_compat.GROUP_BUDGET_S`; shared between the guards of successive copies of one model, so
            each runaway group costs its budget once.

    Attributes:
        skipped: the groups left unpruned, in order (one entry per root layer).
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, *, check: bool = True,
                 runaway: dict[str, str] | None = None) -> None:
        self.model, self.example_inputs, self.check = model, example_inputs, check
        self.names = module_names(model)
        self.skipped: list[SkippedGroup] = []
        self.runaway = {} if runaway is None else runaway
        self._expected = self._output(model) if check else None

    def _output(self, model: nn.Module) -> torch.Tensor:
        return model_outputs(model, [self.example_inputs])[0]

    def _root(self, module: Any) -> str:
        return self.names.get(id(module), type(module).__name__)

    def _skip(self, root: str, reason: str) -> None:
        if all(s.root != root for s in self.skipped):
            self.skipped.append(SkippedGroup(root, reason))
            LOG.warning("prune: group %s left unpruned: %s", root, reason)

    def problem(self) -> str | None:
        """Why the model is broken now, or ``None`` (the check forward pass)."""
        try:
            out = self._output(self.model)
        except Exception as err:
            return f"the pruned model fails: {describe_error(err, self.names)}"
        if tuple(out.shape) != tuple(self._expected.shape):
            return f"the pruned model's output has shape {tuple(out.shape)}, expected {tuple(self._expected.shape)}"
        if not bool(torch.isfinite(out).all()):
            return "the pruned model's output is not finite (NaN/Inf)"
        return None

    def prune(self, graph: tp.DependencyGraph, group: Group) -> bool:
        """Prune ``group`` of ``graph`` (built on ``model``); ``False`` if it was rolled back and skipped.

        An empty group (one :meth:`watch` could not build, already recorded) is skipped.
        Other exceptions (an interrupt, a time budget's expiry) roll back and propagate.
        """
        if not len(group) or getattr(group, "compress_skip", None):
            return False
        snapshot = self._pruned(graph, group)
        if snapshot is None:
            return False
        problem = self._checked([snapshot]) if self.check else None
        if problem is None:
            return True
        self._restore(snapshot)
        self._skip(self._root(group[0].dep.target.module), problem)
        return False

    def _checked(self, snapshots: list[Snapshot]) -> str | None:
        """:meth:`problem`, restoring ``snapshots`` (newest first) when the check itself is interrupted (a time
        budget's expiry) before re-raising."""
        try:
            return self.problem()
        except BaseException:
            self._restore(*snapshots)
            raise

    def _restore(self, *snapshots: Snapshot) -> None:
        """Restore ``snapshots`` in the order given, then the model's width attributes (:func:`sync_widths`)."""
        for snapshot in snapshots:
            snapshot.restore()
        sync_widths(self.model)

    def prune_all(self, graph: tp.DependencyGraph, groups: Iterable[Group], *,
                  record: Callable[[Group], None] = lambda group: None, every: int | None = None) -> None:
        """Prune ``groups`` (tp's interactive step, each built on the model as the previous ones left it) with
        the outcome of :meth:`prune` one by one, but one check forward pass per ``every`` groups
        (:data:`CHECK_EVERY`); ``record(group)`` for each group kept, in order.

        The check is most of guarded pruning's time on deep models (60% on timm's ResNet-101). When a batch's
        check fails, the batch is rolled back and replayed one group at a time; a group built after one that is
        then skipped is built again on the model as it now is (its index maps may read the skipped group's
        widths), so the result is the group-by-group one.
        """
        every = CHECK_EVERY if every is None else every
        batch: list[tuple[Group, Snapshot]] = []
        try:
            for group in groups:
                if not len(group) or getattr(group, "compress_skip", None):
                    continue
                if not self.check or every <= 1:
                    if self.prune(graph, group):
                        record(group)
                    continue
                snapshot = self._pruned(graph, group)
                if snapshot is not None:
                    batch.append((group, snapshot))
                if len(batch) >= every:
                    done, batch = batch, []  # _settle owns it now: restored there, never twice
                    self._settle(graph, done, record)
            done, batch = batch, []
            self._settle(graph, done, record)
        except BaseException:
            self._restore(*(snapshot for _, snapshot in reversed(batch)))
            raise

    def _pruned(self, graph: tp.DependencyGraph, group: Group) -> Snapshot | None:
        """Prune ``group`` unchecked; its snapshot, or ``None`` when tp raised (rolled back and skipped)."""
        with protected():
            snapshot = Snapshot(_group_objects(graph, group))
        try:
            prune_group(graph, group)
        except Exception as err:
            self._restore(snapshot)
            self._skip(self._root(group[0].dep.target.module),
                       f"torch-pruning raised {describe_error(err, self.names)}")
            return None
        except BaseException:
            self._restore(snapshot)
            raise
        return snapshot

    def _settle(self, graph: tp.DependencyGraph, batch: list[tuple[Group, Snapshot]],
                record: Callable[[Group], None]) -> None:
        """Check the model once after ``batch``; on a failure roll it back and replay it group by group."""
        if not batch:
            return
        snapshots = [snapshot for _, snapshot in reversed(batch)]
        if self._checked(snapshots) is None:
            for group, _ in batch:
                record(group)
            return
        self._restore(*snapshots)
        stale = False  # a group built on a model where an earlier group of the batch was pruned, now skipped
        for group, _ in batch:
            if stale:
                group = graph.get_pruning_group(group[0].dep.target.module, group[0].dep.handler,
                                                list(group[0].root_idxs))
            if self.prune(graph, group):
                record(group)
            else:
                stale = True

    def _group(self, graph: tp.DependencyGraph, get_group: Any, module: nn.Module, pruning_fn: Any,
               idxs: Any) -> Group:
        """``get_group(module, pruning_fn, idxs)`` within :data:`~.tp_compat.GROUP_BUDGET_S`. On failure a group
        marked ``compress_skip`` with the reason: after a runaway the part built so far (its layers are not tried
        as roots again), else the root layer alone."""
        root = self._root(module)
        reason = self.runaway.get(root)
        made: list[Group] = []
        if reason is None:
            with _recorded_groups() as made:
                try:
                    return bounded_group(get_group, module, pruning_fn, idxs)
                except RunawayGroup as err:  # the layers it reached belong to the same runaway group
                    reason = str(err)
                    members = [self._root(dep.target.module) for dep, _ in (made[0] if made else ())
                               if graph.is_out_channel_pruning_fn(dep.handler)]  # as tp marks roots visited
                    self.runaway.update(dict.fromkeys([root, *members], reason))
                except Exception as err:
                    reason = f"torch-pruning could not build the group: {describe_error(err, self.names)}"
        self._skip(root, reason)
        group = made[0] if root in self.runaway and made else Group()
        if not len(group) and module in graph.module2node:  # the root alone: BasePruner's constructor reads it
            node = graph.module2node[module]
            group.add_dep(Dependency(pruning_fn, pruning_fn, source=node, target=node), list(idxs))
        group._DG = graph
        group.compress_skip = reason
        return group

    @contextlib.contextmanager
    def building(self) -> Any:
        """While active, every torch-pruning graph builds its groups through :meth:`_group` (``BasePruner``'s
        constructor already builds them all, to count channels); :meth:`watch` covers the pruner's own steps."""
        original = tp.DependencyGraph.get_pruning_group
        guard = self

        def get_pruning_group(graph: tp.DependencyGraph, module: nn.Module, pruning_fn: Any, idxs: Any) -> Group:
            return guard._group(graph, original.__get__(graph), module, pruning_fn, idxs)

        tp.DependencyGraph.get_pruning_group = get_pruning_group
        try:
            yield
        finally:
            tp.DependencyGraph.get_pruning_group = original

    def watch(self, pruner: tp.pruner.BasePruner) -> None:
        """Make ``pruner`` skip (and record) groups whose construction or importance estimation raises.

        Wraps the instance's ``DG.get_pruning_group`` (through :meth:`_group`: a failure returns a group marked
        ``compress_skip``, which tp's pruner and :meth:`prune` pass over) and ``estimate_importance`` (a failure
        returns ``None``, which tp's pruner skips); nothing else of tp changes.
        """
        graph, get_group, estimate = pruner.DG, pruner.DG.get_pruning_group, pruner.estimate_importance

        def get_pruning_group(module: nn.Module, pruning_fn: Any, idxs: Any) -> Group:
            return self._group(graph, get_group, module, pruning_fn, idxs)

        def estimate_importance(group: Group) -> torch.Tensor | None:
            if not len(group) or getattr(group, "compress_skip", None):
                return None
            try:
                return estimate(group)
            except Exception as err:
                self._skip(self._root(group[0].dep.target.module),
                           f"importance estimation raised {describe_error(err, self.names)}")
                return None

        graph.get_pruning_group = get_pruning_group
        pruner.estimate_importance = estimate_importance
