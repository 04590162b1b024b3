"""The compression methods the quality benchmark compares, each brought to the same MACs budget.

- :func:`tp_magnitude`: torch-pruning's own ``MagnitudePruner`` (L2 magnitude, uniform per-layer ratio), the
  channel ratio bisected until tp's MACs count meets the budget; what a torch-pruning user would write.
- :func:`ours_prune`: :func:`compress.transforms.prune.pruner.prune` with a MACs target and a named importance.
- :func:`ours_rewrite`: :func:`compress.transforms.rewrite.apply.rewrite` of one kind, its knob (separable
  ``max_error``, grouped ``groups``) searched so the model's MACs meet the budget.

All take a baseline model and return a *new* model (the baseline is deep-copied, never changed) plus facts.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

__all__ = ["macs_of", "tp_magnitude", "ours_prune", "ours_rewrite"]

_BISECT = 8  # bisection steps (channel ratio / error budget resolution ~ 1/256)
_GROUP_BISECT = 7  # grouped rewrites are slower to plan (co-clustering per candidate group count)


@torch.no_grad()
def macs_of(model: nn.Module, x: torch.Tensor) -> int:
    """Per-sample MACs of ``model`` on ``x`` (1, C, H, W) with torch-pruning's counter (model left in eval)."""
    model.eval()
    macs, _ = tp.utils.count_ops_and_params(model, x)
    return int(macs)


def _head(model: nn.Module) -> list[nn.Module]:
    """The classifier (last Linear): its outputs are the classes and must stay."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]


def _tp_at(model: nn.Module, x: torch.Tensor, ratio: float) -> nn.Module:
    twin = copy.deepcopy(model).eval()
    for p in twin.parameters():  # tp leaves frozen parameters (requires_grad=False) unpruned
        p.requires_grad_(True)
    pruner = tp.pruner.MagnitudePruner(twin, x, importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=ratio, ignored_layers=_head(twin))
    pruner.step()
    return twin


def tp_magnitude(model: nn.Module, x: torch.Tensor, macs_target: float) -> tuple[nn.Module, dict[str, Any]]:
    """torch-pruning ``MagnitudePruner`` (L2, uniform) at the largest MACs ``<= macs_target * original``.

    The uniform channel ratio is bisected (tp has no MACs target of its own); each try prunes a fresh copy.

    Args:
        model: the trained baseline (not modified).
        x: example input ``(1, C, H, W)``.
        macs_target: fraction of the original MACs in ``(0, 1]``.
    """
    budget = macs_target * macs_of(model, x)
    lo, hi, best = 0.0, 0.95, None
    for _ in range(_BISECT):
        mid = (lo + hi) / 2
        twin = _tp_at(model, x, mid)
        if macs_of(twin, x) <= budget:
            hi, best = mid, (twin, mid)
        else:
            lo = mid
    if best is None:
        best = (_tp_at(model, x, hi), hi)
    return best[0], {"pruning_ratio": round(best[1], 4), "importance": "MagnitudeImportance(p=2)",
                     "global_pruning": False}


def ours_prune(model: nn.Module, x: torch.Tensor, macs_target: float, *, importance: str, analysis: Any = None,
               calib: Any = None) -> tuple[nn.Module, dict[str, Any]]:
    """``compress.prune`` of a copy of ``model`` down to ``macs_target`` with the named importance."""
    from compress.transforms.prune.pruner import prune

    twin = copy.deepcopy(model).eval()
    for p in twin.parameters():
        p.requires_grad_(True)
    result = prune(twin, x, macs_target=macs_target, importance=importance, analysis=analysis, calib=calib)
    return twin, {"importance": importance, "ratio": result.ratio, "steps": result.steps,
                  "dead_channels_removed": result.dead.channels_removed,
                  "target_met": result.target_met}


def _rewritten(model: nn.Module, kind: str, x: torch.Tensor | None, analysis: Any,
               **params: Any) -> tuple[nn.Module, list]:
    twin = copy.deepcopy(model).eval()
    from compress.transforms.rewrite.apply import rewrite

    records = rewrite(twin, kind, example_inputs=x, analysis=analysis, **params)
    return twin, records


def _summary(records: list) -> dict[str, Any]:
    done = [r for r in records if r.skipped is None]
    errs = [r.output_error for r in done if r.output_error is not None]
    return {"rewritten": len(done), "skipped": len(records) - len(done),
            "params": sorted({str(r.params) for r in done}),
            "max_output_error": round(max(errs), 4) if errs else None}


def _grouped_knob(model: nn.Module, x: torch.Tensor, budget: float, analysis: Any) -> dict[str, Any]:
    """``groups: auto`` with the highest ``energy_threshold`` whose model meets ``budget`` MACs."""
    def macs(threshold: float) -> int:
        return macs_of(_rewritten(model, "grouped", None, analysis, groups="auto",
                                  energy_threshold=threshold)[0], x)

    lo, hi = 0.01, 1.0  # threshold lo: most groups (fewest MACs); hi: fewest groups
    if macs(lo) > budget:
        hi = lo  # unreachable: the cheapest setting
    for _ in range(_GROUP_BISECT if lo < hi else 0):
        mid = (lo + hi) / 2
        if macs(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return {"groups": "auto", "energy_threshold": round(lo, 4)}


def ours_rewrite(model: nn.Module, x: torch.Tensor, macs_target: float, *, kind: str, analysis: Any = None,
                 probe: torch.Tensor | None = None, calib: Any = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rewrite ``kind`` with its knob searched so the model's MACs meet ``macs_target`` (when reachable).

    ``separable`` with ``calib`` (calibration images): the rewrite's own data-aware ``macs_target``
    allocation (T per layer at the least summed output error; factors fitted to the input patch statistics).
    ``separable`` without ``calib``: the per-layer relative weight-error budget ``max_error`` is bisected (the
    smallest budget that meets the MACs target: the per-layer ``T`` is the smallest whose error fits it). ``grouped``
    (``groups: auto``): the largest kept-energy threshold that meets it (each layer then takes the most groups
    that keep that share of its weight energy). When no setting reaches the budget the cheapest one is
    returned and ``budget_met`` says so. ``probe``: real images ``(B, C, H, W)`` on which the final rewrite
    measures each layer's output error (default ``x``; an all-zero ``x`` would make those errors meaningless).
    """
    budget = macs_target * macs_of(model, x)
    if kind == "separable" and calib is not None:
        return _separable_target(model, x, macs_target, analysis=analysis, probe=probe, calib=calib, budget=budget)
    if kind == "separable":
        lo, hi = 0.0, 0.99
        if macs_of(_rewritten(model, kind, None, analysis, max_error=hi)[0], x) > budget:
            lo = hi  # unreachable: use the largest budget (T = 1 almost everywhere)
        for _ in range(_BISECT if lo < hi else 0):
            mid = (lo + hi) / 2
            if macs_of(_rewritten(model, kind, None, analysis, max_error=mid)[0], x) <= budget:
                hi = mid
            else:
                lo = mid
        knob = {"max_error": round(hi, 4)}
    elif kind == "grouped":
        knob = _grouped_knob(model, x, budget, analysis)
    else:
        raise ValueError(f"ours_rewrite: kind {kind!r} has no budget search (separable, grouped)")
    twin, records = _rewritten(model, kind, x if probe is None else probe, analysis, **knob)
    return twin, {"kind": kind, **knob, **_summary(records), "budget_met": macs_of(twin, x) <= budget}


def _separable_target(model: nn.Module, x: torch.Tensor, macs_target: float, *, analysis: Any,
                      probe: torch.Tensor | None, calib: Any, budget: float) -> tuple[nn.Module, dict[str, Any]]:
    """The data-aware ``macs_target`` separable rewrite; the cheapest rewrite (T = 1) when the target is
    below what separable forms can reach (``budget_met`` then says so)."""
    from compress.errors import CompressError

    example = x if probe is None else probe
    try:
        twin, records = _rewritten(model, "separable", example, analysis, macs_target=macs_target, calib=calib)
        knob: dict[str, Any] = {"macs_target": macs_target, "data_aware": True}
    except CompressError:  # below the cheapest rewrite
        twin, records = _rewritten(model, "separable", example, analysis, T=1, calib=calib)
        knob = {"T": 1, "data_aware": True}
    return twin, {"kind": "separable", **knob, **_summary(records), "budget_met": macs_of(twin, x) <= budget}
