"""What :func:`~compress.transforms.prune.pruner.prune` is asked to do: one validated config.

The recipe's ``prune`` step (:class:`~compress.transforms.prune.step.PruneStep`) is this config plus the step's
own fields, so a recipe and a Python call share one validation and one wording. Kept free of torch-pruning
imports: recipes are parsed before anything heavy loads.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ...config import Config, check

__all__ = ["PruneConfig", "IMPORTANCES", "NEEDS_ANALYSIS", "TIME_BUDGET_S"]

IMPORTANCES = ("l1", "l2", "bn", "taylor", "activation", "apoz", "redundancy", "reconstruction")
NEEDS_ANALYSIS = ("activation", "apoz", "redundancy", "reconstruction")
TIME_BUDGET_S = 120.0  # default wall-clock budget of one prune call (graph building + pruning)

Importance = Literal["l1", "l2", "bn", "taylor", "activation", "apoz", "redundancy", "reconstruction"]


def _pattern_or_module(value: Any) -> bool:
    from torch import nn

    return isinstance(value, (str, nn.Module))


@dataclass(frozen=True)
class PruneConfig(Config):
    """Options of channel pruning.

    Attributes:
        ratio: uniform channel ratio in ``(0, 1)`` removed from every prunable group (relative to original widths).
        macs_target: instead of ``ratio``, prune until MACs are at most this fraction ``(0, 1]`` of the original.
        importance: how channels are ranked (``activation`` / ``apoz`` / ``redundancy`` / ``reconstruction`` need an analysis).
        remove_dead: first remove the analysis' constant channels (structurally dead ones exactly).
        round_to: keep widths multiples of this (e.g. 8 for tensor cores; tp's ``round_to``).
        ignored_layers: fnmatch patterns of qualified names (or, from Python, the modules) whose output channels
            stay.
        per_layer: fnmatch pattern -> channel ratio overriding ``ratio`` (in a coupled group the group's first
            layer decides).
        dead_tol: largest relative output error accepted when folding a dead channel inexactly (borders).
        max_steps: most iterative steps towards ``macs_target``.
        time_budget_s: wall-clock budget in seconds (``None``: unlimited); on expiry the call fails naming the
            layer torch-pruning was working on.
    """

    ratio: float | None = None
    macs_target: float | None = None
    importance: Importance = "l2"
    remove_dead: bool = True
    round_to: int | None = None
    ignored_layers: tuple[str, ...] = ()
    per_layer: dict[str, float] = field(default_factory=dict)
    dead_tol: float = 1e-4
    max_steps: int = 10
    time_budget_s: float | None = TIME_BUDGET_S

    def __post_init__(self) -> None:
        if isinstance(self.ignored_layers, (list, set, frozenset)):  # lists given in Python become tuples
            object.__setattr__(self, "ignored_layers", tuple(self.ignored_layers))
        self.validate()

    def validate(self) -> None:
        check(self.ratio is None or 0.0 < self.ratio < 1.0, "ratio", "a channel ratio in (0, 1) or null", self.ratio)
        check(self.macs_target is None or 0.0 < self.macs_target <= 1.0, "macs_target",
              "a fraction of the MACs in (0, 1] or null", self.macs_target)
        check(self.ratio is None or self.macs_target is None, "macs_target", "null when ratio is given (not both)",
              self.macs_target)
        check(self.ratio is not None or self.macs_target is not None or bool(self.per_layer) or self.remove_dead,
              "ratio", "ratio, macs_target or per_layer (or remove_dead: true)", self.ratio)
        check(self.importance in IMPORTANCES, "importance", "one of " + ", ".join(IMPORTANCES), self.importance)
        check(self.round_to is None or self.round_to >= 1, "round_to", "an integer >= 1 or null", self.round_to)
        check(isinstance(self.ignored_layers, tuple) and all(_pattern_or_module(v) for v in self.ignored_layers),
              "ignored_layers", "a list of layer-name patterns", self.ignored_layers)
        for pattern, value in (self.per_layer or {}).items():
            check(0.0 <= value < 1.0, f"per_layer.{pattern}", "a channel ratio in [0, 1)", value)
        check(self.dead_tol >= 0.0, "dead_tol", "a number >= 0", self.dead_tol)
        check(self.max_steps >= 1, "max_steps", "an integer >= 1", self.max_steps)
        check(self.time_budget_s is None or self.time_budget_s > 0, "time_budget_s", "a number of seconds > 0 or null",
              self.time_budget_s)
