"""Dead channels: channels whose consumers see (almost) nothing but a constant.

Reasons, in order of precedence when several apply:

* ``zero_filter``: the conv's filter weights are zero (L1 norm within ``weight_tol`` of zero, relative to the
  layer's median filter L1); the channel carries ``act(bn(bias))``.
* ``zero_gamma``: the following BatchNorm's ``|gamma|`` is zero (relative ``gamma_tol``); it carries
  ``act(beta)``.
* ``constant``: the observed values vary by at most ``const_tol`` times the layer's typical (median) spread
  ``max - min``: e.g. a ReLU channel whose pre-activation is always negative.
* ``apoz``: at least ``apoz_threshold`` of the observed values are exactly zero (Average Percentage of
  Zeros, meaningful after ReLU-like activations) but the channel is not constant, so removing it is lossy.

``value`` is the constant the consumers see (the observed mean) when the channel is constant over the data,
else ``None``: a constant channel can be removed losslessly by folding ``value`` into the consumers' bias.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

__all__ = ["DeadChannel", "DeadKind", "DEAD_KINDS", "STRUCTURAL_KINDS", "find_dead"]

DeadKind = Literal["zero_filter", "zero_gamma", "constant", "apoz"]
DEAD_KINDS: tuple[str, ...] = ("zero_filter", "zero_gamma", "constant", "apoz")
STRUCTURAL_KINDS: tuple[str, ...] = ("zero_filter", "zero_gamma")  # dead whatever the input


@dataclass(frozen=True)
class DeadChannel:
    """Why one channel is dead.

    Attributes:
        kind: ``"zero_filter"``, ``"zero_gamma"``, ``"constant"`` or ``"apoz"``.
        value: the constant value consumers see when the channel is constant over the data, else ``None``.
        apoz: observed fraction of exact zeros in the channel.
    """

    kind: DeadKind
    value: float | None
    apoz: float = 0.0
    images: int = 0

    @property
    def structural(self) -> bool:
        """Dead by the weights alone (zero filter, zero BN gamma): constant for every input, so removal is exact.

        A ``constant`` channel was only constant on the ``images`` calibration images the analysis saw; other
        inputs may move it (a ReLU that happened to stay off), so its removal is checked on held-out data."""
        return self.kind in STRUCTURAL_KINDS

    def __str__(self) -> str:
        if self.structural:
            const = f"; always {self.value:.6g}" if self.value is not None else ""
            return ("zero filter weights" if self.kind == "zero_filter" else "BatchNorm gamma is zero") + const
        if self.kind == "constant":
            seen = f"{self.images} calibration images" if self.images else "the calibration data"
            value = f" (value {self.value:.6g})" if self.value is not None else ""
            return f"constant on {seen}{value}; not proven for other inputs"
        return f"{self.apoz:.2%} of outputs are exactly zero (APoZ) but not constant: removal is lossy"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form, including the human reason."""
        return {"kind": self.kind, "value": self.value, "apoz": self.apoz, "images": self.images,
                "structural": self.structural, "reason": str(self)}


def _small(values: torch.Tensor, tol: float) -> torch.Tensor:
    """``values <= tol * typical`` where typical is the median (or the max when the median is zero)."""
    typical = values.median()
    if typical <= 0:
        typical = values.max()
    return values <= tol * typical


def find_dead(stats: dict[str, torch.Tensor], *, const_tol: float, apoz_threshold: float, gamma_tol: float,
              weight_tol: float, images: int = 0) -> dict[int, DeadChannel]:
    """Classify the dead channels of one layer.

    Args:
        stats: per-channel ``(C,)`` tensors ``min, max, mean, apoz, weight_l1`` and optionally ``gamma``.
        const_tol / gamma_tol / weight_tol: relative tolerances (see the module docstring).
        apoz_threshold: fraction of exact zeros from which a channel counts as dead.
        images: how many calibration images the statistics come from (named in a data-constant reason).

    Returns:
        ``{channel index: DeadChannel}`` for the dead channels only, ascending.
    """
    constant = _small(stats["max"] - stats["min"], const_tol)
    flags = {"zero_filter": _small(stats["weight_l1"], weight_tol),
             "zero_gamma": _small(stats["gamma"].abs(), gamma_tol) if "gamma" in stats
             else torch.zeros_like(constant),
             "constant": constant,
             "apoz": stats["apoz"] >= apoz_threshold}
    any_flag = torch.stack(list(flags.values())).any(0)
    out: dict[int, DeadChannel] = {}
    for c in any_flag.nonzero().flatten().tolist():
        kind = next(k for k in DEAD_KINDS if bool(flags[k][c]))
        value = float(stats["mean"][c]) if bool(constant[c]) else None
        out[c] = DeadChannel(kind, value, float(stats["apoz"][c]), images)
    return out
