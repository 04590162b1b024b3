"""The result of :func:`compress.analysis.analyze`: per-channel statistics, dead channels, correlations."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CompressError
from . import grouping
from .dead import DEAD_KINDS, DeadChannel, find_dead

__all__ = ["Analysis", "LayerInfo"]

DEFAULT_MIN_SCORE = 0.8


@dataclass(frozen=True)
class LayerInfo:
    """Where one conv's statistics were taken.

    Attributes:
        point: qualified name of the module whose output was measured (conv, its BatchNorm or activation).
        bn: the BatchNorm following the conv, or ``None``.
        activation: class name of the activation module at ``point``, or ``None``.
        channels: number of output channels ``C``.
        samples: values seen per channel (``sum of B*H*W`` over batches and ranks).
    """

    point: str
    bn: str | None
    activation: str | None
    channels: int
    samples: int


class Analysis:
    """Statistics of every executed ``nn.Conv2d`` of a model, taken where each channel's value is final.

    Args:
        info: per layer (conv qualified name, in ``named_modules`` order) its :class:`LayerInfo`.
        stats: per layer float64 ``(C,)`` tensors ``mean, var, min, max, mean_abs, apoz, weight_l1, weight_l2``
            and ``gamma`` (``|gamma|`` of the following BatchNorm) when there is one.
        cov: per layer the ``(C, C)`` float64 covariance, or ``None`` when it was not collected.
        batches / images: how much data was seen.
        notes: remarks for the report (skipped matrices, convs never called, ...).
    """

    def __init__(self, *, info: dict[str, LayerInfo], stats: dict[str, dict[str, torch.Tensor]],
                 cov: dict[str, torch.Tensor | None], batches: int, images: int, notes: list[str]) -> None:
        self.layers: list[str] = list(info)
        self.info = dict(info)
        self._stats = stats
        self._cov = cov
        self.batches, self.images = batches, images
        self.notes = list(notes)
        self._cache: dict[tuple, Any] = {}

    def __repr__(self) -> str:
        return f"Analysis({len(self.layers)} conv layers, {self.batches} batches, {self.images} images)"

    # --- per-channel statistics -------------------------------------------------------------------------
    def _check(self, layer: str) -> str:
        if layer not in self.info:
            shown = ", ".join(self.layers[:6]) + (", ..." if len(self.layers) > 6 else "")
            raise CompressError(f"analysis: no conv layer named {layer!r}; expected one of: {shown}")
        return layer

    def stats(self, layer: str) -> dict[str, torch.Tensor]:
        """Per-channel float64 ``(C,)`` tensors: ``mean, var, min, max, mean_abs, apoz, weight_l1, weight_l2``
        and ``gamma`` (absolute BatchNorm scale) when a BatchNorm follows the conv. Copies."""
        return {k: v.clone() for k, v in self._stats[self._check(layer)].items()}

    def point(self, layer: str) -> str:
        """Qualified name of the module where ``layer``'s statistics were taken."""
        return self.info[self._check(layer)].point

    def activation(self, layer: str) -> str | None:
        """Class name of the activation the statistics were taken after (``None``: no activation module)."""
        return self.info[self._check(layer)].activation

    def dead_channels(self, *, const_tol: float = 1e-6, apoz_threshold: float = 0.99, gamma_tol: float = 1e-6,
                      weight_tol: float = 1e-6) -> dict[str, dict[int, DeadChannel]]:
        """Dead channels of every layer (layers without any are included with an empty dict).

        Args:
            const_tol: a channel is constant when ``max - min <= const_tol * median(max - min)`` of its layer.
            apoz_threshold: fraction of exact zeros from which a non-constant channel is reported as ``apoz``.
            gamma_tol: BN ``|gamma| <= gamma_tol * median |gamma|`` of the layer counts as zero.
            weight_tol: filter L1 ``<= weight_tol * median`` filter L1 of the layer counts as a zero filter.

        See :mod:`compress.analysis.dead` for the precedence of reasons and the meaning of ``value``.
        """
        return {layer: find_dead(self._stats[layer], const_tol=const_tol, apoz_threshold=apoz_threshold,
                                 gamma_tol=gamma_tol, weight_tol=weight_tol, images=self.images)
                for layer in self.layers}

    # --- correlation ------------------------------------------------------------------------------------
    def has_correlation(self, layer: str) -> bool:
        """Whether the channel covariance of ``layer`` was collected (see ``max_channels_for_correlation``)."""
        return self._cov[self._check(layer)] is not None

    def covariance(self, layer: str) -> torch.Tensor:
        """Channel covariance ``(C, C)`` float64 at the layer's statistics point (a copy)."""
        cov = self._cov[self._check(layer)]
        if cov is None:
            raise CompressError(f"analysis: the covariance of {layer!r} was not collected "
                                f"({self.info[layer].channels} channels exceed max_channels_for_correlation)")
        return cov.clone()

    def correlation(self, layer: str) -> torch.Tensor:
        """Channel correlation ``(C, C)`` float64; rows/columns of constant channels are 0 (also the diagonal)."""
        key = ("corr", self._check(layer))
        if key not in self._cache:
            cov = self.covariance(layer)
            s = self._stats[layer]
            live = (s["max"] > s["min"]) & (cov.diagonal() > 0)
            inv = torch.where(live, cov.diagonal().clamp_min(1e-300).rsqrt(), torch.zeros_like(s["min"]))
            corr = (cov * inv[:, None] * inv[None, :]).clamp(-1.0, 1.0)
            corr.diagonal().copy_(live.to(corr.dtype))
            self._cache[key] = corr
        return self._cache[key].clone()

    def _pairs(self, layer: str, keep: torch.Tensor, *, descending: bool) -> list[tuple[int, int, float]]:
        corr = self.correlation(layer)
        i, j = torch.triu_indices(corr.shape[0], corr.shape[0], offset=1)
        vals = corr[i, j]
        sel = keep[i, j]
        i, j, vals = i[sel], j[sel], vals[sel]
        order = vals.abs().argsort(descending=descending, stable=True)
        return list(zip(i[order].tolist(), j[order].tolist(), vals[order].tolist()))

    def redundant_pairs(self, layer: str, min_abs_corr: float = 0.95) -> list[tuple[int, int, float]]:
        """Channel pairs ``(i, j, corr)`` with ``i < j`` and ``|corr| >= min_abs_corr``, strongest first."""
        return self._pairs(layer, self.correlation(layer).abs() >= min_abs_corr, descending=True)

    def low_correlation_pairs(self, layer: str, max_abs_corr: float = 0.05) -> list[tuple[int, int, float]]:
        """Pairs of non-constant channels with ``|corr| <= max_abs_corr``, weakest first."""
        corr = self.correlation(layer)
        live = corr.diagonal() > 0
        return self._pairs(layer, (corr.abs() <= max_abs_corr) & live[:, None] & live[None, :], descending=False)

    # --- grouping ---------------------------------------------------------------------------------------
    def _affinity(self, layer: str) -> torch.Tensor:
        key = ("affinity", layer)
        if key not in self._cache:
            self._cache[key] = grouping.affinity(self.correlation(layer))
        return self._cache[key]

    def _basis(self, layer: str) -> torch.Tensor:
        key = ("basis", layer)
        if key not in self._cache:
            self._cache[key] = grouping.spectral_basis(self._affinity(layer))
        return self._cache[key]

    def suggest_groups(self, layer: str, groups: int, *, seed: int = 0) -> list[list[int]]:
        """Partition ``layer``'s channels into ``groups`` equal groups keeping correlated channels together.

        Balanced spectral clustering refined by swaps (see :mod:`compress.analysis.grouping` for why).

        Returns:
            ``groups`` lists of channel indices, each sorted, ordered by smallest channel.
        """
        c = self.info[self._check(layer)].channels
        if not isinstance(groups, int) or groups < 1 or c % groups:
            raise CompressError(f"analysis: groups for {layer!r} must be a positive divisor of its {c} channels, "
                                f"got {groups!r}")
        key = ("groups", layer, groups, seed)
        if key not in self._cache:
            self._cache[key] = grouping.balanced_partition(self._affinity(layer), groups, seed=seed,
                                                           basis=self._basis(layer))
        return [list(g) for g in self._cache[key]]

    def group_permutation(self, layer: str, groups: int, *, seed: int = 0) -> torch.Tensor:
        """``layer``'s output channels reordered so each suggested group is contiguous: ``(C,)`` int64.

        Position ``j`` holds the original channel placed there (``suggest_groups`` concatenated), the
        ``out_perm`` form a grouped rewrite of ``layer`` (or the ``in_perm`` of its consumer) needs.
        """
        return torch.tensor([c for group in self.suggest_groups(layer, groups, seed=seed) for c in group])

    def group_score(self, layer: str, partition: list[list[int]]) -> float:
        """Fraction of off-diagonal ``|corr|`` of ``layer`` that ``partition`` keeps inside its groups."""
        a = self._affinity(self._check(layer))
        try:
            return grouping.group_score(a, partition)
        except ValueError as err:
            raise CompressError(f"analysis: bad partition for {layer!r}: {err}") from None

    def supported_groups(self, layer: str, *, min_score: float = DEFAULT_MIN_SCORE, seed: int = 0) -> int:
        """The largest group count whose suggested partition keeps at least ``min_score`` of ``|corr|``.

        1 means the correlation structure supports no grouping (typical: independent-looking channels keep
        only about ``1/g`` of ``|corr|`` in ``g`` groups). See :func:`grouping.supported_group_count`.
        """
        key = ("supported", self._check(layer), min_score, seed)
        if key not in self._cache:
            self._cache[key] = grouping.supported_group_count(self._affinity(layer), min_score=min_score,
                                                              seed=seed, basis=lambda: self._basis(layer))
        return self._cache[key]

    # --- reporting --------------------------------------------------------------------------------------
    def summary(self, *, apoz_threshold: float = 0.99, min_score: float = DEFAULT_MIN_SCORE) -> dict[str, Any]:
        """JSON-friendly overview: per layer its point, channel count, dead count by reason, suggested groups."""
        dead = self.dead_channels(apoz_threshold=apoz_threshold)
        layers = {}
        for layer in self.layers:
            by_kind = {k: sum(1 for d in dead[layer].values() if d.kind == k) for k in DEAD_KINDS}
            layers[layer] = {**asdict(self.info[layer]), "dead": by_kind, "dead_total": len(dead[layer]),
                             "suggested_groups": self.supported_groups(layer, min_score=min_score)
                             if self.has_correlation(layer) else None}
        return {"layers": layers, "batches": self.batches, "images": self.images,
                "channels": sum(i.channels for i in self.info.values()),
                "dead_channels": sum(len(d) for d in dead.values()), "apoz_threshold": apoz_threshold,
                "min_group_score": min_score, "notes": list(self.notes)}

    def save(self, path: str | Path, *, apoz_threshold: float = 0.99) -> Path:
        """Write ``analysis.json`` (summary, dead channels with reasons) and ``analysis.pt`` into directory ``path``."""
        from .storage import save_analysis

        return save_analysis(self, path, apoz_threshold=apoz_threshold)

    # --- raw state (for storage) ------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Plain data (dicts, lists, tensors) that :meth:`from_state` restores exactly."""
        return {"format": 1, "info": {k: asdict(v) for k, v in self.info.items()},
                "stats": self._stats, "cov": self._cov, "batches": self.batches, "images": self.images,
                "notes": list(self.notes)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Analysis":
        return cls(info={k: LayerInfo(**v) for k, v in state["info"].items()}, stats=state["stats"],
                   cov=state["cov"], batches=state["batches"], images=state["images"], notes=state["notes"])
