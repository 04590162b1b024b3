"""Dependency-aware channel pruning on torch-pruning 1.6: by a uniform channel ratio or down to a MACs target.

:func:`prune` mutates the model in place:

1. makes it traceable (torchvision ShuffleNetV2 blocks get a module shuffle, see :mod:`.tp_compat`);
2. protects the classifier's outputs (layers whose channels reach the model output) and user-ignored layers;
3. removes dead channels losslessly when an analysis is given (:mod:`.dead`);
4. prunes each tp group to ``int(original_width * (1 - ratio))`` channels with tp's ``BasePruner`` and a named
   importance (:mod:`.importance`); dead channels the analysis reports rank first.

Ratios are channel ratios, relative to the *original* widths (a MobileNet width multiplier of ``1 - ratio``);
MACs fall roughly quadratically. ``macs_target`` raises the ratio in steps of :data:`STEP`, re-estimating
importance on the pruned model each step, and sizes the last step by bisection so the MACs land in
``[(1 - MACS_TOL) * target, target]`` where the channel granularity allows.

Every group is pruned through :class:`.guard.GroupGuard`: a group torch-pruning fails on (or that breaks the
model) is rolled back and listed in ``PruneResult.skipped``; the rest prune. The whole call runs within
``time_budget_s`` (:class:`.budget.TimeBudget`); torch-pruning errors become a :class:`CompressError` naming
the layer (:mod:`.where`).
"""
from __future__ import annotations

import copy
import fnmatch
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Collection, Iterable, Mapping

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from tqdm import tqdm

from ...config import options_from
from ...errors import CompressError
from ...modes import evaluating, restore_training
from .budget import TimeBudget, protected
from .dead import DeadReport, remove_dead_channels
from .guard import GroupGuard, SkippedGroup
from .config import NEEDS_ANALYSIS, TIME_BUDGET_S, PruneConfig
from .importance import DeadFirst, make_importance
from .layer_roles import layer_width, locked_layers, output_layers
from .tp_compat import (GRAPH_BUILDING, GRAPH_HINT, ChannelOrigins, build_graph, channel_groups, customized_pruners,
                        link_index_maps, order_split_outputs, replay_history, swap_shufflenet_blocks, traceable)
from .where import tp_errors

__all__ = ["PruneResult", "prune", "count_macs_params", "STEP", "MAX_RATIO", "MACS_TOL", "TIME_BUDGET_S"]

STEP = 0.1  # channel-ratio increase per iterative step towards a MACs target
MAX_RATIO = 0.95  # never ask for more than this channel ratio
MACS_TOL = 0.02  # the MACs target is met when MACs are in [(1 - MACS_TOL) * target, target]
_MAX_BISECT = 12
DEAD_SHARE = 0.4  # of the prune time budget, for the dead-channel pass (the rest prunes by importance)
_BUDGET_HINT = ("put that layer (or its block) in ignored_layers, trace with a smaller example input "
                "(e.g. 1x3x64x64), or raise time_budget_s")


@dataclass
class PruneResult:
    """What :func:`prune` did.

    Attributes:
        macs_before / macs_after: multiply-accumulates for ``example_inputs`` (tp's counter).
        params_before / params_after: parameter counts.
        channels_before / channels_after: output width of every conv / linear, by qualified name.
        dead: dead channels removed (with their measured fold error) and skipped (with reasons).
        steps: pruning steps applied (a ratio is one step; a MACs target takes several).
        ratio: the channel ratio finally applied, relative to the original widths (``None``: no ratio pruning).
        macs_target: the requested fraction of the original MACs, if any.
        target_met: whether ``macs_after <= macs_target * macs_before`` (``None`` without a target).
        shortfall: when the target was not met, ``macs_fraction - macs_target`` (how far above it the MACs stayed,
            as a fraction of the original); else ``None``.
        skipped: channel groups left unpruned because torch-pruning failed on them or they broke the model
            (rolled back exactly; see :mod:`.guard`).
        importance: the importance name used.
        ignored: layers whose output channels were protected (user patterns plus the auto-detected classifier).
        prepared: changes made only to let tp trace the model (e.g. ShuffleNetV2 blocks swapped).
        seconds: wall time.
        time_budget_s: the wall-clock budget the call ran under (``None``: none).
        peak_rss_bytes: highest resident set size of the process during the call (see :mod:`.budget`).
        peak_increase_bytes: how far the call raised it above its start.
        kept: for every conv / linear whose width changed, the indices (in the model as it was before this call)
            of its remaining output channels, in their current order (``ChannelOrigins.index``).
    """

    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    channels_before: dict[str, int]
    channels_after: dict[str, int]
    dead: DeadReport = field(default_factory=DeadReport)
    steps: int = 0
    ratio: float | None = None
    macs_target: float | None = None
    target_met: bool | None = None
    importance: str = "l2"
    ignored: list[str] = field(default_factory=list)
    prepared: list[str] = field(default_factory=list)
    seconds: float = 0.0
    shortfall: float | None = None
    skipped: list[SkippedGroup] = field(default_factory=list)
    time_budget_s: float | None = None
    peak_rss_bytes: int | None = None
    peak_increase_bytes: int | None = None
    kept: dict[str, list[int]] = field(default_factory=dict)

    @property
    def macs_fraction(self) -> float:
        """``macs_after / macs_before``."""
        return self.macs_after / max(self.macs_before, 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON/YAML-friendly) for records and reports."""
        out = asdict(self)
        out["dead"] = self.dead.to_dict()
        out["macs_fraction"] = round(self.macs_fraction, 6)
        out["layers"] = {n: [self.channels_before[n], self.channels_after.get(n, 0)] for n in self.channels_before
                         if self.channels_after.get(n, 0) != self.channels_before[n]}
        del out["channels_before"], out["channels_after"]
        return out


@torch.no_grad()
def count_macs_params(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """``(MACs, params)`` of ``model`` for ``example_inputs`` with tp's op counter (the model is not changed)."""
    with restore_training(model):
        macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    return int(macs), int(params)


def _widths(model: nn.Module, names: Iterable[str]) -> dict[str, int]:
    return {name: layer_width(model.get_submodule(name)) for name in names}


def _check_context(c: PruneConfig, analysis: Any, calib: Any) -> None:
    """What the config alone cannot tell: whether the analysis and calibration data it needs were given."""
    if c.ratio is None and c.macs_target is None and not c.per_layer and analysis is None:
        raise CompressError("prune: nothing to do; give ratio, macs_target or per_layer "
                            "(or remove_dead with an analysis)")
    if c.importance in NEEDS_ANALYSIS and analysis is None:
        raise CompressError(f"prune.importance: {c.importance!r} needs an analysis (run an 'analyze' step first)")
    if c.importance == "taylor" and not calib:
        raise CompressError("prune.importance: 'taylor' needs calibration batches (calib)")


def _match(patterns: Iterable[Any], model: nn.Module, field_name: str) -> set[str]:
    """Qualified names of the modules (and their submodules) that the patterns / modules select."""
    names = {m: n for n, m in model.named_modules()}
    selected: set[str] = set()
    for pattern in patterns:
        if isinstance(pattern, nn.Module):
            roots = [names[pattern]] if pattern in names else []
        else:
            roots = [n for n in names.values() if n and fnmatch.fnmatchcase(n, str(pattern))]
        if not roots:
            raise CompressError(f"prune.{field_name}: {pattern!r} matches no module of the model "
                                "(use qualified names from model.named_modules(), fnmatch patterns allowed)")
        for root in roots:
            selected.update(f"{root}.{sub}" if sub else root for sub, _ in model.get_submodule(root).named_modules())
    return selected


def _check_analysis(analysis: Any, origins: ChannelOrigins) -> None:
    """Refuse an analysis whose channel numbering cannot be this model's (taken before an earlier change)."""
    for layer, channels in analysis.dead_channels().items():
        width = origins.initial.get(layer)
        if width is not None and channels and max(channels) >= width:
            raise CompressError(f"prune: the analysis reports channel {max(channels)} of {layer}, which has only "
                                f"{width}; re-run 'analyze' after changing the model")


def _calib_batches(calib: Any) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    if calib is None:
        return []
    items = [calib] if isinstance(calib, torch.Tensor) else list(calib)
    out = []
    for item in items:
        if isinstance(item, torch.Tensor):
            out.append((item, None))
        else:
            out.append((item[0], item[1] if len(item) > 1 else None))
    return out


def _accumulate_gradients(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor | None]]) -> None:
    """Loss gradients for Taylor importance; labels default to the model's own predictions."""
    model.zero_grad(set_to_none=True)
    with torch.enable_grad(), evaluating(model):
        for x, y in batches:
            out = model(x)
            out = out if isinstance(out, torch.Tensor) else out[0]
            target = y.to(out.device) if y is not None else out.detach().argmax(dim=1)
            F.cross_entropy(out, target).backward()


@dataclass
class _Trial:
    model: nn.Module
    origins: ChannelOrigins
    history: list
    ratio: float
    macs: int
    skipped: list[SkippedGroup]


class _Pruner:
    """Prunes one model to total channel ratios relative to its original widths (see :func:`prune`)."""

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, origins: ChannelOrigins, *, importance: str,
                 analysis: Any, ignored: set[str], round_to: int | None, per_layer: Mapping[str, float],
                 calib: list, verbose: bool) -> None:
        self.model, self.example_inputs, self.origins = model, example_inputs, origins
        self.importance, self.analysis, self.ignored = importance, analysis, ignored
        self.round_to, self.calib, self.verbose = round_to, calib, verbose
        self.per_layer = {name: ratio for pattern, ratio in per_layer.items()
                          for name in _match([pattern], model, "per_layer")}
        self.dead = ({layer: set(ch) for layer, ch in analysis.dead_channels().items()}
                     if analysis is not None else {})
        self.skipped: dict[str, SkippedGroup] = {}  # groups left unpruned on self.model, by root
        self.runaway: dict[str, str] = {}  # layers of groups tp could not build in time, for every copy's guard

    def _keep_skipped(self, skipped: Iterable[SkippedGroup]) -> None:
        for s in skipped:
            self.skipped.setdefault(s.root, s)

    def _ratio_dict(self, model: nn.Module, origins: ChannelOrigins, ratio: float) -> dict[nn.Module, float]:
        """tp ratios relative to the *current* widths that leave ``int(original * (1 - r))`` channels."""
        out = {}
        for name, width in _widths(model, origins.index).items():
            if name in self.ignored:
                continue
            keep = max(1, int(origins.initial[name] * (1.0 - self.per_layer.get(name, ratio))))
            # +0.5: tp keeps int(width * (1 - r)) channels; aim between integers so float error cannot round down
            out[model.get_submodule(name)] = 0.0 if keep >= width else 1.0 - (keep + 0.5) / width
        return out

    def _importance(self, model: nn.Module, origins: ChannelOrigins) -> Any:
        names = {m: n for n, m in model.named_modules()}
        imp = make_importance(self.importance, analysis=self.analysis, origins=origins, names=names)
        return DeadFirst(imp, self.dead, origins, names) if self.dead else imp

    def apply(self, model: nn.Module, origins: ChannelOrigins, ratio: float) -> tuple[list, list[SkippedGroup]]:
        """Prune ``model`` in place to ``ratio``; returns tp's pruning history (for replay on another copy) and
        the groups left unpruned."""
        names = {m: n for n, m in model.named_modules()}
        pruners = customized_pruners()
        if self.importance == "taylor":
            _accumulate_gradients(model, self.calib)
        guard = GroupGuard(model, self.example_inputs, runaway=self.runaway)
        with tp_errors(model, GRAPH_BUILDING, hint=GRAPH_HINT), traceable(model, pruners), guard.building(), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tp warns about unwrapped parameters it then handles correctly
            pruner = tp.pruner.BasePruner(
                model, self.example_inputs, importance=self._importance(model, origins), pruning_ratio=0.0,
                pruning_ratio_dict=self._ratio_dict(model, origins, ratio),
                ignored_layers=[model.get_submodule(n) for n in sorted(self.ignored)], round_to=self.round_to,
                customized_pruners=pruners, root_module_types=[nn.Conv2d, nn.Linear],
                # tp's dict defaults are shared between instances and mutated: always pass fresh ones
                in_channel_groups={}, out_channel_groups=channel_groups(model), num_heads={}, channel_groups={})
        order_split_outputs(pruner.DG)
        link_index_maps(pruner.DG)
        guard.watch(pruner)
        with tp_errors(model, "prune: torch-pruning's pruner"):
            guard.prune_all(pruner.DG, pruner.step(interactive=True), record=lambda group: origins.record(group, names))
        model.zero_grad(set_to_none=True)
        return pruner.pruning_history(), guard.skipped

    def trial(self, ratio: float) -> _Trial:
        """Prune a copy of the current model to ``ratio`` and count its MACs."""
        model, origins = copy.deepcopy(self.model), self.origins.copy()
        history, skipped = self.apply(model, origins, ratio)
        return _Trial(model, origins, history, ratio, count_macs_params(model, self.example_inputs)[0], skipped)

    def commit(self, trial: _Trial) -> None:
        """Replay a trial's exact pruning on the real model (tp's pruning history, each group guarded again:
        the trial checked the model, so only exceptions are caught here)."""
        guard = GroupGuard(self.model, self.example_inputs, check=False)
        names = {m: n for n, m in self.model.named_modules()}
        for group in replay_history(build_graph(self.model, self.example_inputs), trial.history, prune=guard.prune):
            self.origins.record(group, names)
        self._keep_skipped([*trial.skipped, *guard.skipped])

    def to_macs(self, target: float, max_steps: int) -> tuple[int, float]:
        """Prune in steps until MACs <= ``target``; returns ``(steps, final ratio)``."""
        done, steps = 0.0, 0
        macs = count_macs_params(self.model, self.example_inputs)[0]
        bar = tqdm(total=max_steps, desc="prune steps", leave=False, disable=not self.verbose)
        while macs > target and steps < max_steps and done < MAX_RATIO:
            trial = self.trial(min(done + STEP, MAX_RATIO))
            if trial.macs <= target:
                trial = self._bisect(done, trial, target)
            self.commit(trial)
            done, macs, steps = trial.ratio, trial.macs, steps + 1
            bar.update(1)
        bar.close()
        return steps, done

    def _bisect(self, low: float, best: _Trial, target: float) -> _Trial:
        """Between ratio ``low`` (MACs above target) and ``best`` (at or below), find the largest MACs <= target."""
        high = best.ratio
        for _ in range(_MAX_BISECT):
            if best.macs >= (1.0 - MACS_TOL) * target:
                break
            trial = self.trial((low + high) / 2)
            if trial.macs > target:
                low = trial.ratio
            else:
                high, best = trial.ratio, trial
        return best


def _auto_ignored(model: nn.Module, example_inputs: torch.Tensor) -> set[str]:
    """Names of the classifier (layers reaching the output) and of layers tp cannot prune consistently."""
    names = {m: n for n, m in model.named_modules()}
    graph = build_graph(model, example_inputs)
    return {names[m] for m in output_layers(graph) | locked_layers(graph)}


def _prepare(model: nn.Module) -> list[str]:
    swapped = swap_shufflenet_blocks(model)
    return [f"{swapped} ShuffleNetV2 blocks -> ShuffleV2Block (module channel shuffle)"] if swapped else []


def prune(model: nn.Module, example_inputs: torch.Tensor, config: PruneConfig | None = None, *,
          analysis: Any = None, calib: Any = None, held_out: Any = None, verbose: bool = False,
          **options: Any) -> PruneResult:
    """Prune output channels of ``model`` in place, keeping every dependency consistent (torch-pruning).

    Args:
        model: the network; mutated in place (and its ShuffleNetV2 blocks swapped for traceable ones).
        example_inputs: one batch for tracing and MACs counting, shape ``(1, C, H, W)``, on the model's device.
        config: what to prune (:class:`~compress.transforms.prune.config.PruneConfig`: ``ratio`` or
            ``macs_target``, ``importance``, ``remove_dead``, ``round_to``, ``ignored_layers``, ``per_layer``,
            ``dead_tol``, ``max_steps``, ``time_budget_s``); or give its fields as keyword ``options``
            (``prune(model, x, ratio=0.3)``). On expiry of ``time_budget_s`` the group being pruned is rolled
            back, groups already pruned stay pruned (the model runs), and a :class:`CompressError` names the layer
            torch-pruning was working on.
        analysis: a :class:`compress.analysis.Analysis` (dead channels, per-channel statistics, correlations).
        calib: batches (tensors or ``(images, labels)``) used by ``taylor`` and to verify dead-channel folds.
        held_out: batches (tensors or ``(images, labels)``) the analysis did not see, e.g. the val split: the
            dead-channel removal's output error is also measured on them (``result.dead.held_out_error``).
        verbose: show progress bars.

    Returns:
        A :class:`PruneResult`.

    Raises:
        CompressError: invalid arguments (ranges, unknown importance, patterns matching nothing, ...), the time
            budget ran out, or torch-pruning failed on the whole graph (the message names the layer).
    """
    c = options_from(PruneConfig, config, options, who="prune")
    _check_context(c, analysis, calib)
    time_budget_s = c.time_budget_s
    budget = TimeBudget(time_budget_s, what="prune", model=model, hint=_BUDGET_HINT)
    result = budget.run(_prune, model, example_inputs, ratio=c.ratio, macs_target=c.macs_target,
                        importance=c.importance, analysis=analysis, calib=calib, remove_dead=c.remove_dead,
                        dead_tol=c.dead_tol, round_to=c.round_to, ignored_layers=c.ignored_layers,
                        per_layer=c.per_layer, max_steps=c.max_steps, held_out=held_out, verbose=verbose,
                        dead_time_s=None if time_budget_s is None else DEAD_SHARE * time_budget_s)
    result.time_budget_s, result.seconds = time_budget_s, budget.usage.seconds
    result.peak_rss_bytes, result.peak_increase_bytes = budget.usage.peak_rss_bytes, budget.usage.peak_increase_bytes
    if result.target_met is False:
        skipped = f", {len(result.skipped)} groups skipped" if result.skipped else ""
        warnings.warn(f"prune: MACs target {c.macs_target} not reached ({result.macs_fraction:.3f} of the original, "
                      f"{result.shortfall:.3f} short, after {result.steps} steps{skipped}); ignored layers, "
                      f"skipped groups or max_steps={c.max_steps} limit it", stacklevel=2)
    return result


def _prune(model: nn.Module, example_inputs: torch.Tensor, *, ratio: float | None, macs_target: float | None,
           importance: str, analysis: Any, calib: Any, remove_dead: bool, dead_tol: float, round_to: int | None,
           ignored_layers: Collection[str | nn.Module], per_layer: Mapping[str, float] | None, max_steps: int,
           held_out: Any, verbose: bool, dead_time_s: float | None = None) -> PruneResult:
    """:func:`prune` without the argument checks and the budget (``dead_time_s``: the dead-channel pass's share)."""
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
    ignored = _match(ignored_layers, model, "ignored_layers")
    prepared = _prepare(model)
    calib_batches = _calib_batches(calib)
    macs0, params0 = count_macs_params(model, example_inputs)
    origins = ChannelOrigins(model)
    if analysis is not None:
        _check_analysis(analysis, origins)
    ignored |= _auto_ignored(model, example_inputs)
    dead, steps, applied = DeadReport(), 0, None
    try:
        if remove_dead and analysis is not None:
            dead = remove_dead_channels(model, example_inputs, analysis, probe=[x for x, _ in calib_batches] or None,
                                        tol=dead_tol, origins=origins, verbose=verbose,
                                        ignored={model.get_submodule(n) for n in ignored},
                                        held_out=[x for x, _ in _calib_batches(held_out)] or None,
                                        time_limit_s=dead_time_s)
        pruner = _Pruner(model, example_inputs, origins, importance=importance, analysis=analysis, ignored=ignored,
                         round_to=round_to, per_layer=per_layer or {}, calib=calib_batches, verbose=verbose)
        if macs_target is not None:
            steps, applied = pruner.to_macs(macs_target * macs0, max_steps)
        elif ratio is not None or per_layer:
            steps, applied = 1, ratio or 0.0
            pruner._keep_skipped(pruner.apply(model, origins, applied)[1])
    finally:
        with protected():  # tp replaces pruned parameters by new ones that require grad: frozen layers stay frozen
            for name, param in model.named_parameters():
                param.requires_grad_(name not in frozen)
    macs1, params1 = count_macs_params(model, example_inputs)
    met = None if macs_target is None else macs1 <= macs_target * macs0
    shortfall = round(macs1 / max(macs0, 1) - macs_target, 6) if met is False else None
    return PruneResult(macs0, macs1, params0, params1, dict(origins.initial), _widths(model, origins.index), dead,
                       steps, applied, macs_target, met, importance, sorted(n for n in ignored if n in origins.index),
                       prepared, shortfall=shortfall, skipped=list(pruner.skipped.values()),
                       kept={n: t.tolist() for n, t in origins.index.items() if t.numel() != origins.initial[n]})
