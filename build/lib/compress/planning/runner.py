"""The planner's measuring hand: apply choices to a copy of the model and time it against the original."""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..measurement import compare_latency, cost
from .apply import apply_choices
from .result import LayerChoice

__all__ = ["Runner"]


class Runner:
    """Applies choices to a copy of the model and measures it against the original."""

    def __init__(self, model: nn.Module, x: torch.Tensor, *, device: torch.device, batch: int,
                 dtype: torch.dtype, channels_last: bool, runs: int, fold_bn: bool, calib: list | None = None,
                 verbose: bool) -> None:
        self.model, self.x, self.batch, self.calib = model, x, batch, calib
        self.settings = dict(device=device, batch_sizes=(batch,), dtype=dtype, channels_last=channels_last,
                             runs=runs, fold_bn=fold_bn, verbose=verbose)
        self.base = cost(model, x)

    def original_ms(self) -> float:
        """The original's fastest end-to-end time (ms; the table keeps fastest times too)."""
        comp = compare_latency({"original": self.model}, self.x, **self.settings)
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
            row = compare_latency({"original": self.model, "planned": candidate}, self.x, **self.settings).rows()[0]
            out["latency_row"] = row
            out["latency"] = row["compressed_ms"] / row["baseline_ms"]
        return out
