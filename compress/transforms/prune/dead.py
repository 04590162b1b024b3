"""Lossless removal of dead channels: a channel that is constant downstream carries no information.

A channel the analysis reports constant (``value`` not ``None``) is removed together with everything
torch-pruning couples to it (its BN, depthwise convs, residual partners, concatenations, shuffles). What it
contributed is a constant at the input of each consumer conv / linear; that constant is *measured* at the
consumer on probe inputs (so BN -> ReLU pre-activation paths, residual sums and SE gates need no special
cases) and ``W[:, idx] * c`` is folded into the consumer's bias, or into the ``running_mean`` of a BatchNorm
that directly follows it.

The fold is exact for zero constants, linear consumers, 1x1 / unpadded convs and non-zero padding modes. A
non-zero constant into a zero-padded KxK conv differs at the borders; such a removal is tried on a copy and kept
only when the measured output error stays within ``tol``. A group is skipped (with its reason) when a consumer
does not see a constant, a grouped conv or channel-mixing norm consumes it, or it reaches the model output.
"""
from __future__ import annotations

import copy
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Collection, Iterable, Sequence

import torch
import torch_pruning as tp
from torch import nn
from tqdm import tqdm

from ...modes import evaluating
from .budget import protected
from .layer_roles import layer_width
from .tp_compat import ChannelOrigins, bounded_group, build_graph, out_channel_items, prune_group
from .where import describe_error, module_names

__all__ = ["DeadRemoval", "DeadSkip", "DeadReport", "remove_dead_channels", "relative_error", "model_outputs"]

LOG = logging.getLogger(__name__)

_CONST_RTOL = 1e-6  # a consumer input counts as constant when max - min <= this * max(1, |mean|)
_MIXING = (nn.LayerNorm, nn.GroupNorm, nn.MultiheadAttention, nn.LSTM, nn.Embedding)


@dataclass
class DeadRemoval:
    """Dead channels removed as one tp group.

    Attributes:
        layer: the analysed conv the channels belong to.
        channels: their original indices in ``layer``.
        kinds: per channel the analysis' verdict (``zero_filter``, ``zero_gamma``, ``constant``).
        values: per channel the constant at its final point, from the analysis.
        exact: whether the removal is exact for every input: every fold is algebraically exact AND every channel is
            structurally dead (zero filter / zero BN gamma). A channel that was only constant on the calibration
            images is never called exact: its error on held-out data is :attr:`DeadReport.held_out_error`.
        fold_error: relative max output error of the model measured after this removal (vs before any).
        coupled: other layers whose output channels went with the group (residual / concat partners).
        coupled_dead: dead channels of those layers (original indices) that this removal covered.
    """

    layer: str
    channels: list[int]
    kinds: list[str]
    values: list[float]
    exact: bool
    fold_error: float
    coupled: list[str] = field(default_factory=list)
    coupled_dead: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class DeadSkip:
    """Dead channels left in place, and why."""

    layer: str
    channels: list[int]
    reason: str


@dataclass
class DeadReport:
    """All removals and skips of one :func:`remove_dead_channels` call, plus the total measured output error."""

    removed: list[DeadRemoval] = field(default_factory=list)
    skipped: list[DeadSkip] = field(default_factory=list)
    error: float = 0.0
    held_out_error: float | None = None

    @property
    def channels_removed(self) -> int:
        """Dead channels removed, counting those of coupled layers that the same groups covered."""
        return sum(len(r.channels) + sum(len(v) for v in r.coupled_dead.values()) for r in self.removed)

    def to_dict(self) -> dict[str, Any]:
        return {"removed": [asdict(r) for r in self.removed], "skipped": [asdict(s) for s in self.skipped],
                "channels_removed": self.channels_removed, "error": self.error, "held_out_error": self.held_out_error}


@dataclass
class _Fold:
    consumer: str
    idxs: list[int]
    values: torch.Tensor  # (len(idxs),) constants at the consumer's input
    exact: bool


@dataclass
class _Plan:
    layer: str
    dead: dict[int, Any]  # original channel of ``layer`` -> its DeadChannel; the group's root channels
    folds: list[_Fold]
    members: list[tuple[str, int]]  # (layer, current channel) of every output channel the group removes
    coupled_dead: dict[str, dict[int, Any]] = field(default_factory=dict)

    @property
    def coupled(self) -> list[str]:
        return sorted({name for name, _ in self.members} - {self.layer})

    @property
    def exact(self) -> bool:
        return all(f.exact for f in self.folds)


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return _first_tensor(next(iter(out.values())))
    return _first_tensor(out[0])


@torch.no_grad()
def model_outputs(model: nn.Module, batches: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Eval-mode outputs (first tensor of each) of ``model`` on ``batches``; the model's modes are restored."""
    with evaluating(model):
        return [_first_tensor(model(x)).float() for x in batches]


def relative_error(reference: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor]) -> float:
    """``max |out - ref| / max |ref|`` over all batches."""
    diff = max(float((o - r).abs().max()) for r, o in zip(reference, outputs))
    scale = max(float(r.abs().max()) for r in reference)
    return diff / max(scale, 1e-12)


@torch.no_grad()
def _input_ranges(model: nn.Module, modules: Iterable[nn.Module],
                  batches: Sequence[torch.Tensor]) -> dict[nn.Module, tuple[torch.Tensor, ...]]:
    """Per input channel ``(min, max, mean)`` of each conv / linear in ``modules`` over ``batches``."""
    acc: dict[nn.Module, list[torch.Tensor]] = {}

    def hook(module: nn.Module, args: tuple) -> None:
        x = args[0].detach().double()
        x = x.movedim(1, -1) if isinstance(module, nn.Conv2d) else x
        x = x.reshape(-1, x.shape[-1])
        lo, hi, total, count = x.amin(0), x.amax(0), x.sum(0), x.shape[0]
        if module in acc:
            old = acc[module]
            lo, hi, total, count = lo.minimum(old[0]), hi.maximum(old[1]), total + old[2], count + old[3]
        acc[module] = [lo, hi, total, count]

    handles = [m.register_forward_pre_hook(hook) for m in modules]
    try:
        model_outputs(model, batches)
    finally:
        for h in handles:
            h.remove()
    return {m: (v[0], v[1], v[2] / v[3]) for m, v in acc.items()}


def _zero_padded(conv: nn.Conv2d) -> bool:
    return conv.padding_mode == "zeros" and (conv.padding == "same" or any(p > 0 for p in conv.padding))


def _unbalanced(module: nn.Module, removed: set[int]) -> bool:
    """True when ``removed`` outputs of a grouped (not depthwise) conv are not the same count in every group:
    the remaining filters would then be re-assigned to other input groups (or not divide into groups at all)."""
    if not isinstance(module, nn.Conv2d) or not 1 < module.groups < module.in_channels:
        return False
    per_group = module.out_channels // module.groups
    counts = [0] * module.groups
    for i in removed:
        counts[i // per_group] += 1
    return len(set(counts)) > 1


def _plan_group(group: Any, graph: Any, stats: dict, names: dict, ignored: Collection[nn.Module]) -> tuple[list, str]:
    """Folds for one tp group, or the reason it cannot be removed losslessly."""
    folds: list[_Fold] = []
    for item in group:
        module, handler, idxs = item.dep.target.module, item.dep.handler, list(item.idxs)
        name = names.get(module, str(module))
        if isinstance(module, tp.ops._OutputOp):
            return [], "reaches the model output"
        if isinstance(module, _MIXING):
            return [], f"feeds {type(module).__name__} {name}, which mixes channels"
        if graph.is_out_channel_pruning_fn(handler) and module in ignored:
            return [], f"coupled to ignored layer {name}"
        if handler not in (tp.prune_conv_in_channels, tp.prune_linear_in_channels):
            continue
        if isinstance(module, nn.Conv2d) and module.groups > 1:
            return [], f"consumed by grouped conv {name}"
        if module not in stats:
            return [], f"consumer {name} is not reached by the probe inputs"
        lo, hi, mean = (t[idxs] for t in stats[module])
        if bool(((hi - lo) > _CONST_RTOL * mean.abs().clamp_min(1.0)).any()):
            return [], f"input of {name} is not constant (range up to {float((hi - lo).max()):.3g})"
        exact = not isinstance(module, nn.Conv2d) or not _zero_padded(module) or bool((mean == 0).all())
        folds.append(_Fold(name, idxs, mean.clone(), exact))
    return folds, ""


def _following_bn(graph: Any, module: nn.Module) -> nn.Module | None:
    """The BatchNorm fed only by ``module`` (then a bias shift can go into its running mean), else ``None``."""
    outs = graph.module2node[module].outputs
    if len(outs) != 1 or len(outs[0].inputs) != 1:
        return None
    bn = outs[0].module
    if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.running_mean is not None:
        return bn
    return None


@torch.no_grad()
def _apply_fold(model: nn.Module, graph: Any, fold: _Fold) -> None:
    consumer = model.get_submodule(fold.consumer)
    weight = consumer.weight.detach()
    values = fold.values.to(weight)
    if isinstance(consumer, nn.Conv2d):
        delta = (weight[:, fold.idxs] * values.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
    else:
        delta = weight[:, fold.idxs] @ values
    bn = _following_bn(graph, consumer)
    if bn is not None:
        # BN(y + d) with running mean m equals BN(y) with running mean m - d; batch statistics absorb d anyway
        bn.running_mean -= delta.to(bn.running_mean)
        return
    if consumer.bias is None:
        consumer.bias = nn.Parameter(torch.zeros_like(delta), requires_grad=consumer.weight.requires_grad)
    consumer.bias += delta


def _prune_plan(model: nn.Module, graph: Any, plan: _Plan, origins: ChannelOrigins, names: dict) -> None:
    root = model.get_submodule(plan.layer)
    fn = tp.prune_linear_out_channels if isinstance(root, nn.Linear) else tp.prune_conv_out_channels
    # earlier plans on the same layer renumbered its channels: look the root channels up by original index
    group = graph.get_pruning_group(root, fn, [origins.current(plan.layer, o) for o in sorted(plan.dead)])
    origins.record(group, names)
    with protected():  # a time budget (see .budget) must not stop it half-way
        prune_group(graph, group)


class _Remover:
    """One dead-channel removal pass over a model (see :func:`remove_dead_channels`)."""

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, batches: Sequence[torch.Tensor],
                 origins: ChannelOrigins, ignored: Collection[nn.Module], tol: float, verbose: bool) -> None:
        self.model, self.example_inputs, self.batches = model, example_inputs, list(batches)
        self.origins, self.ignored, self.tol, self.verbose = origins, set(ignored), tol, verbose
        self.names = {m: n for n, m in model.named_modules()}
        self._ids = module_names(model)
        self.graph = build_graph(model, example_inputs)
        self.reference = model_outputs(model, self.batches)
        self.report = DeadReport()
        self._guard: Any = None  # the pass's GroupGuard, built on first use (one reference forward per pass)
        self.deadline: float | None = None  # perf_counter() time after which no more layers are planned or retried

    def out_of_time(self, layer: str, channels: list[int]) -> bool:
        """Past the deadline: record ``layer``'s ``channels`` as left in place and return ``True``."""
        if self.deadline is None or time.perf_counter() < self.deadline:
            return False
        self.report.skipped.append(DeadSkip(layer, channels, "not examined: the dead-channel pass ran out of its "
                                                             "share of the prune time budget"))
        return True

    def _stats(self) -> dict:
        layers = [m for m in self.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        return _input_ranges(self.model, layers, self.batches)

    def plan(self, candidates: dict[str, dict[int, Any]]) -> list[_Plan]:
        """Plans for the candidate channels in the current numbering: one tp group per layer when all its channels
        can go together, else one per channel (so one bad channel does not block the others)."""
        stats, covered, plans = self._stats(), {}, []
        for layer, channels in tqdm(candidates.items(), desc="dead channels", leave=False, disable=not self.verbose):
            if self.out_of_time(layer, sorted(channels)):
                continue
            todo = {}
            for original, dead in channels.items():
                current = self.origins.current(layer, original)
                if current is None:
                    continue
                owner = covered.get((layer, current))
                if owner is None:
                    todo[original] = dead
                else:  # a residual / concat partner's plan already removes this channel
                    (owner.dead if owner.layer == layer else owner.coupled_dead.setdefault(layer, {}))[original] = dead
            together = self._plan_one(layer, todo, stats, report=False) if len(todo) > 1 else None
            parts = [together] if together else [self._plan_one(layer, {o: d}, stats, report=True)
                                                 for o, d in todo.items()]
            for plan in filter(None, parts):
                covered.update({key: plan for key in plan.members})
                plans.append(plan)
        return self._keep_a_channel(plans)

    def _keep_a_channel(self, plans: list[_Plan]) -> list[_Plan]:
        """Drop plans that, with the ones kept before them, would remove every output channel of a layer (on
        few calibration images a whole narrow layer, e.g. an SE squeeze, can look constant) or leave a grouped
        conv's groups unequal."""
        removed: dict[str, set[int]] = {}
        kept = []
        for plan in plans:
            after = {name: removed.get(name, set()) | {i for n, i in plan.members if n == name}
                     for name in {n for n, _ in plan.members}}
            modules = {n: self.model.get_submodule(n) for n in after}
            emptied = sorted(n for n, idx in after.items() if len(idx) >= layer_width(modules[n]))
            unbalanced = sorted(n for n, idx in after.items() if _unbalanced(modules[n], idx))
            if emptied or unbalanced:
                reason = (f"would remove every output channel of {emptied[0]}" if emptied else
                          f"would remove unequal numbers of outputs from the groups of grouped conv {unbalanced[0]}")
                self.report.skipped.append(DeadSkip(plan.layer, sorted(plan.dead), reason))
                continue
            removed.update(after)
            kept.append(plan)
        return kept

    def _plan_one(self, layer: str, dead: dict[int, Any], stats: dict, report: bool) -> _Plan | None:
        module = self.model.get_submodule(layer)
        fn = tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels
        try:
            group = bounded_group(self.graph.get_pruning_group, module, fn,
                                  [self.origins.current(layer, o) for o in sorted(dead)])
            folds, reason = _plan_group(group, self.graph, stats, self.names, self.ignored)
        except Exception as err:  # tp maps some groups' channels out of range (split / concat blocks): skip it
            folds, reason = [], f"torch-pruning failed on its group: {describe_error(err, self._ids)}"
        if reason:
            if report:
                self.report.skipped.append(DeadSkip(layer, sorted(dead), reason))
            return None
        members = [(n, i) for item, n in out_channel_items(group, self.names) for i in item.idxs]
        return _Plan(layer, dict(dead), folds, members)

    def _record(self, plan: _Plan, error: float) -> None:
        channels = sorted(plan.dead)
        self.report.removed.append(DeadRemoval(
            plan.layer, channels, [plan.dead[c].kind for c in channels], [float(plan.dead[c].value) for c in channels],
            plan.exact and all(getattr(plan.dead[c], "structural", False) for c in channels), error, plan.coupled, {k: sorted(v) for k, v in plan.coupled_dead.items()}))

    def _guarded(self, apply: Any) -> tuple[str | None, float]:
        """Run ``apply()`` (folds and prunes); if torch-pruning raises or the model no longer runs (or gives a
        different output shape, or non-finite outputs), put the model, graph and numbering back exactly and
        return why. Returns ``(problem or None, relative output error on the probe batches)``."""
        from .guard import GroupGuard, Snapshot, model_objects  # guard imports this module's model_outputs

        if self._guard is None:
            self._guard = GroupGuard(self.model, self.example_inputs)
        guard = self._guard
        with protected():
            snapshot = Snapshot(model_objects(self.graph, self.origins))
        try:
            apply()
            problem = guard.problem()
        except Exception as err:
            problem = f"torch-pruning raised {describe_error(err, self._ids)}"
        except BaseException:
            snapshot.restore()
            raise
        if problem is None:
            return None, relative_error(self.reference, model_outputs(self.model, self.batches))
        snapshot.restore()
        return problem, float("nan")

    def _apply_exact(self, plans: list[_Plan]) -> None:
        for plan in plans:  # all folds first: they index the consumers in the pre-pruning numbering
            for fold in plan.folds:
                _apply_fold(self.model, self.graph, fold)
        for plan in plans:
            _prune_plan(self.model, self.graph, plan, self.origins, self.names)

    def remove_exact(self, plans: list[_Plan]) -> None:
        """Fold every exact plan (all in the pre-pruning numbering), then prune them one by one.

        Guarded: when torch-pruning breaks the model on any of them (blocks that split or concatenate, e.g.
        Res2Net), everything is rolled back and the layers are bisected: each half is planned again in the
        then-current numbering and applied on its own, down to single layers; a layer whose removal still
        breaks the model keeps its channels, skipped with the reason (a few bad layers among ``n`` cost
        ``O(log n)`` tries each, not ``n``).
        """
        exact = [p for p in plans if p.exact]
        if not exact:
            return
        problem, error = self._guarded(lambda: self._apply_exact(exact))
        if problem is None:
            self._commit(exact, error)
            return
        LOG.warning("dead-channel removal: torch-pruning broke the model (%s); bisecting the %d layers", problem,
                    len({p.layer for p in exact}))
        layers: dict[str, dict[int, Any]] = {}
        for plan in exact:
            layers.setdefault(plan.layer, {}).update(plan.dead)
        self._bisect(list(layers.items()), problem)

    def _bisect(self, layers: list[tuple[str, dict[int, Any]]], problem: str) -> None:
        """Remove the dead channels of ``layers`` (original numbering), which together gave ``problem``."""
        if len(layers) == 1:
            layer, dead = layers[0]
            self.report.skipped.append(DeadSkip(layer, sorted(dead), problem))
            return
        for half in (layers[:len(layers) // 2], layers[len(layers) // 2:]):
            plans = [p for p in self.plan(dict(half)) if p.exact]
            if not plans:
                continue  # removed with a coupled layer's plan already, or skipped by plan() with its reason
            half_problem, error = self._guarded(lambda: self._apply_exact(plans))
            if half_problem is None:
                self._commit(plans, error)
            else:
                self._bisect(half, half_problem)

    def _commit(self, plans: list[_Plan], error: float) -> None:
        self._check_exact(error)
        for plan in plans:
            self._record(plan, error)

    def _check_exact(self, error: float) -> None:
        if error > max(self.tol, 1e-4):
            warnings.warn(f"dead-channel removal changed the outputs by {error:.3g} (relative), expected ~0: some "
                          "consumer of a removed channel is not a conv / linear this fold models", stacklevel=4)

    def remove_approximate(self, layer: str, original: int, dead: Any) -> None:
        """Try one border-inexact removal on a copy; keep it on the model when the output error is within tol."""
        if self.origins.current(layer, original) is None:
            return
        plans = self.plan({layer: {original: dead}})
        if not plans:
            return
        plan = plans[0]
        trial = copy.deepcopy(self.model)
        trial_graph = build_graph(trial, self.example_inputs)
        try:
            for fold in plan.folds:
                _apply_fold(trial, trial_graph, fold)
            _prune_plan(trial, trial_graph, plan, self.origins.copy(), {m: n for n, m in trial.named_modules()})
            error = relative_error(self.reference, model_outputs(trial, self.batches))
        except Exception as err:  # torch-pruning broke the trial copy (split / concat blocks): nothing changed here
            self.report.skipped.append(DeadSkip(layer, [original], "torch-pruning broke the model: "
                                                f"{describe_error(err, module_names(trial))}"))
            return
        if error > self.tol:
            self.report.skipped.append(DeadSkip(layer, [original], f"border fold error {error:.3g} > tol {self.tol}"))
            return
        for fold in plan.folds:
            _apply_fold(self.model, self.graph, fold)
        _prune_plan(self.model, self.graph, plan, self.origins, self.names)
        self._record(plan, error)


def remove_dead_channels(model: nn.Module, example_inputs: torch.Tensor, analysis: Any, *,
                         probe: Sequence[torch.Tensor] | None = None, tol: float = 1e-4,
                         origins: ChannelOrigins | None = None, ignored: Collection[nn.Module] = (),
                         held_out: Sequence[torch.Tensor] | None = None, time_limit_s: float | None = None,
                         verbose: bool = False) -> DeadReport:
    """Remove the constant channels that ``analysis.dead_channels()`` reports, folding them into consumers.

    Args:
        model: changed in place.
        example_inputs: a batch for tracing, shape ``(1, C, H, W)``.
        analysis: provides ``dead_channels() -> {conv_name: {channel: DeadChannel(kind, value)}}`` in the original
            numbering (translated through ``origins``).
        probe: batches ``(B, C, H, W)`` on which consumer inputs are checked for constancy and output error is
            measured; default ``example_inputs``. Use calibration data: data-dependent constants (a ReLU that is
            off on real images) are only constant on real images.
        tol: largest relative output error accepted for a border-inexact fold.
        origins: the model's channel numbering (updated in place); default: the model is unpruned.
        ignored: layers whose output channels must not change (e.g. the classifier).
        held_out: batches ``(B, C, H, W)`` the decision did not see (a recipe's val split): the model's relative
            output error after all removals is measured on them too (:attr:`DeadReport.held_out_error`), since a
            channel constant on the probe batches need not be constant on new inputs.
        time_limit_s: seconds after which no further layer is planned or retried (what is left stays, recorded
            as skipped with that reason); on random weights or a few calibration images tens of thousands of
            channels can look constant, each a torch-pruning group to check. ``None``: no limit.
        verbose: show a progress bar.

    Returns:
        What was removed (with measured errors) and what was skipped (with reasons).
    """
    origins = origins if origins is not None else ChannelOrigins(model)
    batches = list(probe) if probe else [example_inputs]
    held_out = list(held_out or [])
    held_reference = model_outputs(model, held_out) if held_out else None
    remover = _Remover(model, example_inputs, batches, origins, ignored, tol, verbose)
    remover.deadline = None if time_limit_s is None else time.perf_counter() + time_limit_s
    candidates: dict[str, dict[int, Any]] = {}
    for layer, channels in analysis.dead_channels().items():
        if layer not in origins.index:
            remover.report.skipped.append(DeadSkip(layer, sorted(channels), "not a conv / linear of this model"))
            continue
        constant = {c: d for c, d in channels.items() if d.value is not None}
        if len(constant) < len(channels):
            remover.report.skipped.append(DeadSkip(layer, sorted(set(channels) - set(constant)),
                                                   "not constant (no value); ranked first instead"))
        if constant:
            candidates[layer] = constant
    plans = remover.plan(candidates)
    remover.remove_exact(plans)
    for plan in plans:
        if not plan.exact:  # retried channel by channel, each measured on a copy
            if remover.out_of_time(plan.layer, sorted(plan.dead)):
                continue
            for original, dead in plan.dead.items():
                remover.remove_approximate(plan.layer, original, dead)
    report = remover.report
    report.error = relative_error(remover.reference, model_outputs(model, batches))
    if held_reference is not None:
        report.held_out_error = relative_error(held_reference, model_outputs(model, held_out))
    return report
