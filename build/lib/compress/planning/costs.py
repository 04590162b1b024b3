"""Accuracy cost of candidate changes, in one unit: the fraction of a layer's output energy that is lost.

Pruning. A channel's output energy is ``E[x**2] = var + mean**2`` (statistics from the
:class:`~compress.analysis.Analysis`, taken after the conv's BatchNorm and activation). Removal cost, per
producing layer and normalised by the layer's total energy:

* dead channels (zero filter, zero BN scale, constant) are free;
* the varying part is discounted by redundancy: ``var * (1 - rho**2)`` where ``rho`` is the channel's largest
  ``|corr|`` with a channel that stays (a consumer, after fine-tuning, recovers what a kept twin carries);
* the constant part ``mean**2`` is charged at 10%: a consumer's bias can absorb a constant offset.

Channels leave greedily, cheapest first, re-evaluating redundancy against the channels still kept. Without an
analysis the cost is torch-pruning's group L2 magnitude importance, squared and normalised.

Rewrites lose the fraction ``||W' - W||**2 / ||W||**2`` (squared relative weight-reconstruction error) of the
layer's (white-input) output energy; a separable rewrite priced with its conv's input patch moments (measured
on calibration data) loses its relative expected output error instead, the error the data-aware rewrite
minimises.

A layer that loses the fraction ``e`` of its output energy is charged ``e / (1 - e)``, the lost-to-kept energy
ratio (a noise-to-signal ratio): about ``e`` for small losses, unbounded as a layer is gutted, so the search
spreads cuts over layers instead of emptying the one that is cheapest per channel. Every layer counts with the
same weight (its share is one layer), so pruning and rewrite costs compare directly.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .candidates import Form
from .groups import ChannelGroup

__all__ = ["removal_order", "rewrite_cost", "loss_ratio", "OFFSET_WEIGHT"]

OFFSET_WEIGHT = 0.1


def loss_ratio(lost: float) -> float:
    """Cost of losing the fraction ``lost`` of a layer's output energy: ``lost / (1 - lost)`` (capped at 999)."""
    lost = min(max(lost, 0.0), 0.999)
    return lost / (1.0 - lost)


def _member_terms(analysis: Any, layer: str, dead: dict[int, Any]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(varying cost (C,), constant cost (C,), corr**2 (C, C) or None)`` of one producing layer."""
    s = analysis.stats(layer)
    var, mean2 = s["var"].clamp_min(0), s["mean"].pow(2)
    total = float((var + mean2).sum()) or 1.0
    base, offset = var / total, OFFSET_WEIGHT * mean2 / total
    for c, info in dead.items():
        if info.kind != "apoz":
            base[c] = offset[c] = 0.0
    corr2 = analysis.correlation(layer).pow(2) if analysis.has_correlation(layer) else None
    if corr2 is not None:
        corr2.fill_diagonal_(0.0)
    return base, offset, corr2


def removal_order(group: ChannelGroup, analysis: Any = None, *, limit: int,
                  dead: dict[str, dict[int, Any]] | None = None) -> tuple[list[int], list[float]]:
    """The first ``limit`` channels to remove from ``group``, cheapest first, and each one's marginal cost.

    Args:
        group: the channel group (indices in its root's numbering, which all producers share).
        analysis: an :class:`~compress.analysis.Analysis` of the model, or ``None`` (weight magnitude only).
        limit: how many channels to order.
        dead: ``analysis.dead_channels()`` (computed once by the caller), or ``None``.

    Returns:
        ``(channels, cumulative)``: removal order and, for ``k = 0..len(channels)``, the cost of removing the
        first ``k`` channels (the sum over producing layers of :func:`loss_ratio` of the energy they lost).
    """
    layers = [n for n in group.producers + group.depthwise if analysis is not None and n in analysis.layers]
    if not layers:
        imp = torch.tensor(group.weight_importance, dtype=torch.float64).pow(2)
        imp = imp / (float(imp.sum()) or 1.0)
        order = torch.argsort(imp, stable=True)[:limit]
        lost = torch.cat([imp.new_zeros(1), imp[order].cumsum(0)])
        return order.tolist(), [loss_ratio(float(e)) for e in lost]
    terms = [_member_terms(analysis, n, (dead or {}).get(n, {})) for n in layers]
    kept = torch.ones(group.width, dtype=torch.bool)
    lost = torch.zeros(len(terms), dtype=torch.float64)
    order, cumulative = [], [0.0]
    for _ in range(min(limit, group.width - 1)):
        parts = []
        for base, offset, corr2 in terms:
            rho2 = corr2.max(dim=1).values if corr2 is not None else 0.0
            parts.append(base * (1.0 - rho2) + offset)
        cost = torch.stack(parts).sum(0)
        cost[~kept] = float("inf")
        c = int(torch.argmin(cost))
        order.append(c)
        kept[c] = False
        lost += torch.stack([p[c] for p in parts])
        cumulative.append(sum(loss_ratio(float(e)) for e in lost))
        for _, _, corr2 in terms:
            if corr2 is not None:
                corr2[:, c] = 0.0  # a removed channel no longer covers for anyone
    return order, cumulative


def rewrite_cost(conv: nn.Conv2d, form: Form, *, moments: torch.Tensor | None = None) -> float:
    """:func:`loss_ratio` of the squared relative error of rewriting ``conv`` (real weights) into ``form``.

    Args:
        conv: the dense conv.
        form: the rewrite.
        moments: ``(M, kh*kw, kh*kw)`` input patch moments of ``conv``
            (:func:`compress.transforms.rewrite.patch_stats.capture_patch_moments`): a separable form is then priced by
            its expected output error on that data; other forms ignore them.
    """
    return loss_ratio(form.error2(conv, moments=moments))
