"""The planner's measuring hand: apply choices to a copy of the model and time it against the original."""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..errors import CompressError
from ..measurement import Comparison, compare_latency, cost
from .options import PlanOptions
from .apply import apply_choices
from .result import LayerChoice

__all__ = ["Runner"]


class Runner:
    """Applies choices to a copy of the model and measures it against the original."""

    def __init__(self, model: nn.Module, x: torch.Tensor, options: PlanOptions, *, calib: list | None = None,
                 verbose: bool) -> None:
        self.model, self.x, self.batch, self.calib = model, x, options.batch, calib
        self.runtime = options.runtime
        # the torch runtime is timed eagerly (BN folding optional); any other through its checked sessions
        where = dict(fold_bn=options.fold_bn) if options.runtime == "torch" else dict(runtimes=(options.runtime,))
        self.settings = dict(device=options.device, batch_sizes=(options.batch,), dtype=options.dtype,
                             channels_last=options.channels_last, runs=options.runs, verbose=verbose, **where)
        self.base = cost(model, x)

    def _compare(self, models: dict[str, nn.Module]) -> Comparison:
        comp = compare_latency(models, self.x, **self.settings)
        skipped = [t.skipped for t in comp.timings.values() if t.skipped]
        if skipped:  # the runtime was usable when the plan began: a model it cannot take is the user's to know
            raise CompressError(f"plan runtime {self.runtime!r}: {skipped[0]}")
        return comp

    def original_ms(self) -> float:
        """The original's fastest end-to-end time (ms; the table keeps fastest times too)."""
        comp = self._compare({"original": self.model})
        if comp.timings:
            return next(iter(comp.timings.values())).stats["original"].min_ms
        return comp.results["original"].stats[self.batch].min_ms

    def build(self, choices: list[LayerChoice]) -> tuple[nn.Module, list[str]]:
        candidate = copy.deepcopy(self.model)
        notes = apply_choices(candidate, choices, self.x, calib=self.calib)
        return candidate, notes

    def measure(self, candidate: nn.Module, *, latency: bool) -> dict[str, Any]:
        c = cost(candidate, self.x)
        out: dict[str, Any] = {"macs": c.macs / self.base.macs, "params": c.params / self.base.params,
                               "latency_row": None}
        if latency:
            rows = self._compare({"original": self.model, "planned": candidate}).rows()
            row = next(r for r in rows if r["model"] == "planned")
            out["latency_row"] = row
            out["latency"] = row["compressed_ms"] / row["baseline_ms"]
        return out
