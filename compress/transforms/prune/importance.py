"""Channel importance by name, as torch-pruning importance callables.

Every importance here maps a tp pruning group to a 1-D score per root channel (lower is pruned first), the
contract of ``tp.importance.Importance``. Magnitude, BN-scale and Taylor scores come from tp itself; the
analysis-based ones (``activation``, ``apoz``, ``redundancy``, ``reconstruction``) read per-channel statistics that
:mod:`compress.analysis` measured on the *original* channel numbering, translated to the current one by
:class:`~compress.transforms.prune.tp_compat.ChannelOrigins`. The callables keep no state between calls.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch_pruning as tp
from torch import nn

from ...errors import CompressError
from .config import IMPORTANCES, NEEDS_ANALYSIS
from .tp_compat import ChannelOrigins, out_channel_items

__all__ = ["IMPORTANCES", "NEEDS_ANALYSIS", "make_importance", "AnalysisScore", "DeadFirst", "Fallback"]


Scores = Callable[[str, torch.Tensor], "torch.Tensor | None"]


class Fallback:
    """Use ``primary``; where it has nothing to say about a group (returns ``None``), use ``backup``.

    tp skips a group whose importance is ``None``; e.g. BN-scale has no score for a group without BatchNorm, and
    that group should still be pruned by magnitude instead of silently kept.
    """

    def __init__(self, primary: Callable, backup: Callable) -> None:
        self.primary, self.backup = primary, backup

    def __call__(self, group: Any) -> torch.Tensor | None:
        imp = self.primary(group)
        return self.backup(group) if imp is None else imp


class AnalysisScore:
    """Group importance from per-channel analysis scores of the group's convs (mean over the convs that have one).

    Args:
        scores: ``scores(layer_name, original_indices) -> (n,) tensor or None`` (``None``: no data for the layer).
        origins: current -> original channel numbering of each layer.
        names: module -> qualified name in the model.
    """

    def __init__(self, scores: Scores, origins: ChannelOrigins, names: Mapping[nn.Module, str]) -> None:
        self.scores, self.origins, self.names = scores, origins, names

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor | None:
        root_len = len(group[0].idxs)
        total = torch.zeros(root_len, dtype=torch.float64)
        count = 0
        for item, name in out_channel_items(group, self.names):
            if any(r is None or r >= root_len for r in item.root_idxs):
                continue
            values = self.scores(name, self.origins.original(name)[list(item.idxs)])
            if values is None:
                continue
            total.index_add_(0, torch.as_tensor(item.root_idxs), values.double().cpu())
            count += 1
        return None if count == 0 else (total / count).float()


class DeadFirst:
    """Wrap an importance so channels the analysis found dead in *every* producer of the group score ``-inf``.

    Args:
        base: the importance to wrap.
        dead: layer name -> set of original channel indices that are dead.
        origins: current -> original channel numbering.
        names: module -> qualified name.
    """

    def __init__(self, base: Callable, dead: Mapping[str, set[int]], origins: ChannelOrigins,
                 names: Mapping[nn.Module, str]) -> None:
        self.base, self.dead, self.origins, self.names = base, dead, origins, names

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor | None:
        imp = self.base(group)
        if imp is None:
            return None
        all_dead: torch.Tensor | None = None
        for item, name in out_channel_items(group, self.names):
            if len(item.root_idxs) != len(item.idxs) or any(r is None for r in item.root_idxs):
                continue
            flags = torch.zeros(len(imp), dtype=torch.bool)
            dead = self.dead.get(name, set())
            originals = self.origins.original(name)[list(item.idxs)].tolist()
            flags[torch.as_tensor(item.root_idxs)] = torch.as_tensor([o in dead for o in originals])
            all_dead = flags if all_dead is None else all_dead & flags
        if all_dead is None or not bool(all_dead.any()):
            return imp
        imp = imp.clone()
        imp[all_dead.to(imp.device)] = float("-inf")
        return imp


def _fetch(get: Callable[[str], Any], name: str, origins: ChannelOrigins) -> torch.Tensor | None:
    """``get(name)`` as float64, ``None`` where the analysis has nothing for the layer; checks the numbering."""
    try:
        value = get(name)
    except (KeyError, CompressError):  # layer not analysed (e.g. a Linear) or no correlation collected
        return None
    if value is None:
        return None
    if value.shape[0] != origins.initial.get(name, -1):
        raise CompressError(f"prune: the analysis of {name} has {value.shape[0]} channels but the layer had "
                            f"{origins.initial.get(name)} when pruning started; re-run 'analyze' after changing "
                            "the model")
    return value.double()


def _stat_scores(analysis: Any, origins: ChannelOrigins, key: str,
                 transform: Callable[[torch.Tensor], torch.Tensor]) -> Scores:
    def scores(name: str, originals: torch.Tensor) -> torch.Tensor | None:
        values = _fetch(lambda n: analysis.stats(n).get(key), name, origins)
        return None if values is None else transform(values[originals])

    return scores


def _redundancy_scores(analysis: Any, origins: ChannelOrigins) -> Scores:
    """``1 - max |corr|`` with another *kept* channel of the same layer (a near-copy of a kept channel is cheap)."""

    def scores(name: str, originals: torch.Tensor) -> torch.Tensor | None:
        corr = _fetch(analysis.correlation, name, origins)
        if corr is None:
            return None
        kept = origins.original(name)
        sub = corr.abs()[originals][:, kept].clone()
        # a channel is trivially correlated with itself: mask that entry out
        sub[originals[:, None] == kept[None, :]] = 0.0
        return 1.0 - sub.nan_to_num(0.0).amax(dim=1).clamp(0.0, 1.0)

    return scores


# Ridge of the kept channels' covariance, relative to its mean diagonal, before inverting it: keeps the inverse
# finite when channels are exact linear combinations of others (their unexplained variance is then ~0, as it is).
_COV_RIDGE = 1e-9


def _unexplained_scores(analysis: Any, origins: ChannelOrigins) -> Scores:
    """Variance of each channel that the layer's *other kept* channels cannot rebuild linearly (plus a bias).

    With covariance ``S`` of the kept channels, that is ``1 / (S^-1)_cc`` (the conditional variance given the
    rest). A least-squares refit of the consumers (:func:`compress.reconstruct`) replaces a removed channel by
    the best linear combination of the kept ones, so the error it leaves is this variance times the consumers'
    weights on the channel (:class:`_ConsumerEnergy`); a channel that is a linear combination of kept ones
    scores ~0 and goes first. One-shot per pruning step (an Optimal-Brain-Surgeon saliency on the consumer's
    input, channel-wise), re-evaluated on the kept set at every step.
    """

    def scores(name: str, originals: torch.Tensor) -> torch.Tensor | None:
        cov = _fetch(analysis.covariance, name, origins)
        if cov is None:
            return None
        kept = origins.original(name)
        sub = cov[kept][:, kept]
        ridge = _COV_RIDGE * float(sub.diagonal().mean().clamp_min(1e-300))
        eye = torch.eye(len(kept), dtype=sub.dtype)
        precision = torch.linalg.inv(sub + ridge * eye)
        unexplained = (1.0 / precision.diagonal()).clamp_min(0.0)
        position = {int(o): i for i, o in enumerate(kept.tolist())}
        return unexplained[[position[int(o)] for o in originals]]

    return scores


class _ConsumerEnergy:
    """Per root channel, the summed squared weights that the group's consumers (dense convs, linears) put on it
    (``None`` for a group without such a consumer, e.g. one reaching the output)."""

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor | None:
        root_len = len(group[0].idxs)
        total = torch.zeros(root_len, dtype=torch.float64)
        found = False
        for item in group:
            module, handler, idxs = item.dep.target.module, item.dep.handler, list(item.idxs)
            if handler not in (tp.prune_conv_in_channels, tp.prune_linear_in_channels):
                continue
            weight = getattr(module, "weight", None)
            if (not isinstance(weight, torch.Tensor) or getattr(module, "groups", 1) != 1 or not idxs
                    or max(idxs) >= weight.shape[1] or any(r is None or r >= root_len for r in item.root_idxs)):
                continue
            taken = weight.detach()[:, idxs].double().pow(2)  # (out, idxs) for a linear, (out, idxs, kh, kw)
            energy = taken.reshape(taken.shape[0], taken.shape[1], -1).sum(dim=(0, 2)).cpu()
            total.index_add_(0, torch.as_tensor(item.root_idxs), energy)
            found = True
        return total.float() if found else None


class _Product:
    """Elementwise product of two group importances (both must score the group)."""

    def __init__(self, left: Callable, right: Callable) -> None:
        self.left, self.right = left, right

    def __call__(self, group: Any) -> torch.Tensor | None:
        a, b = self.left(group), self.right(group)
        if a is None or b is None:
            return a if b is None else None
        return a * b.to(a.device, a.dtype)


class _GradientsOrNone:
    """tp's Taylor importance reads ``weight.grad``; return ``None`` (not crash) for a group lacking gradients."""

    def __init__(self, base: Callable) -> None:
        self.base = base

    def __call__(self, group: Any) -> torch.Tensor | None:
        for item in group:
            weight = getattr(item.dep.target.module, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.grad is None:
                return None
        return self.base(group)


def make_importance(name: str, *, analysis: Any = None, origins: ChannelOrigins | None = None,
                    names: Mapping[nn.Module, str] | None = None) -> Callable:
    """Build the tp importance callable called ``name`` (one of :data:`IMPORTANCES`).

    Args:
        name: ``l1`` / ``l2`` (filter magnitude), ``bn`` (BatchNorm scale), ``taylor`` (|weight x loss-gradient|;
            the caller must have run backward on calibration batches), ``activation`` (mean |x| at the channel's
            final point), ``apoz`` (1 - fraction of zeros), ``redundancy`` ((1 - max |corr| with a kept channel)
            x L2 magnitude), ``reconstruction`` (the variance the other kept channels cannot rebuild linearly x
            the consumers' squared weights on the channel: what a least-squares refit of the consumers cannot
            recover; pair it with ``reconstruct: true``).
        analysis: a :class:`compress.analysis.Analysis`; required by the analysis-based names.
        origins: current -> original channel numbering (required with ``analysis``).
        names: module -> qualified name (required with ``analysis``).

    Raises:
        CompressError: unknown name, or an analysis-based name without an analysis.
    """
    if name not in IMPORTANCES:
        raise CompressError(f"prune.importance: expected one of {', '.join(IMPORTANCES)}, got {name!r}")
    l1 = tp.importance.GroupMagnitudeImportance(p=1)
    l2 = tp.importance.GroupMagnitudeImportance(p=2)
    if name == "l1":
        return l1
    if name == "l2":
        return l2
    if name == "bn":
        return Fallback(tp.importance.BNScaleImportance(), l1)
    if name == "taylor":
        return Fallback(_GradientsOrNone(tp.importance.GroupTaylorImportance()), l2)
    if analysis is None or origins is None or names is None:
        raise CompressError(f"prune.importance: {name!r} needs an analysis (run an 'analyze' step before 'prune')")
    if name == "activation":
        scores = _stat_scores(analysis, origins, "mean_abs", lambda t: t)
    elif name == "apoz":
        scores = _stat_scores(analysis, origins, "apoz", lambda t: 1.0 - t)
    elif name == "reconstruction":
        return Fallback(_Product(AnalysisScore(_unexplained_scores(analysis, origins), origins, names),
                                 _ConsumerEnergy()), l2)
    else:
        return Fallback(_Product(AnalysisScore(_redundancy_scores(analysis, origins), origins, names), l2), l2)
    return Fallback(AnalysisScore(scores, origins, names), l2)
