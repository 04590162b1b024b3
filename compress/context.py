"""The state a recipe run carries from step to step."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # imported lazily at run time to keep `import compress` light
    from .data import DataBundle

__all__ = ["StepRecord", "RunContext"]


@dataclass
class StepRecord:
    """What one recipe step did and what the model looked like after it.

    Attributes:
        name: unique name in the run, e.g. ``"prune#2"``.
        kind: the registered step name, e.g. ``"prune"``.
        metrics: accuracy (top1/top5 on the test split), params, macs, seconds taken.
        details: step-specific data returned by the handler (per-layer records, ...).
    """

    name: str
    kind: str
    metrics: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunContext:
    """Everything a step handler may read or change.

    Attributes:
        out_dir: the run's output directory (already created and locked).
        device: where models run.
        seed: the recipe's seed.
        model: the model being compressed; steps replace or mutate it.
        baseline: a frozen copy of the original model (teacher, reference for agreement); never mutated.
        data: loaders ``train``, ``val``, ``test``, ``calib`` and facts about the data.
        example_inputs: one input batch of shape ``(1, C, H, W)`` on ``device``.
        analysis: the latest :class:`compress.analysis.Analysis`, or ``None``.
        records: one :class:`StepRecord` per executed step, in order (index 0 is the baseline).
        environment: seed, versions, device, thread count (see :func:`compress.env.environment`).
        recipe: the parsed recipe; ``recipe_file`` its path (``None`` for the embedded default).
        step_index: index of the step being executed (``-1`` before the first step).
        rank / world_size: distributed position (0 / 1 when not distributed).
        state: free-form per-run data steps share: ``"resume"`` (the current step continues a killed run),
            ``"verbose"`` (progress bars on), ``"baseline_origin"``.
    """

    out_dir: Path
    device: torch.device
    seed: int
    model: nn.Module
    baseline: nn.Module
    data: "DataBundle"
    example_inputs: torch.Tensor
    recipe: Any = None
    recipe_file: str | None = None
    analysis: Any = None
    records: list[StepRecord] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    step_index: int = -1
    rank: int = 0
    world_size: int = 1
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        """True on the process that writes files (rank 0)."""
        return self.rank == 0

    def measure(self, model: nn.Module | None = None) -> dict[str, Any]:
        """Accuracy on the test split plus params/MACs of ``model`` (default: the current model)."""
        from .measurement import cost, evaluate

        model = self.model if model is None else model
        c = cost(model, self.example_inputs)
        acc = evaluate(model, self.data.test, device=self.device, reference=self.baseline,
                       verbose=bool(self.state.get("verbose", True)))
        return {"params": c.params, "macs": c.macs, **acc.summary()}

    def record(self, kind: str, details: dict[str, Any] | None = None, *, seconds: float | None = None,
               measure: bool = True) -> StepRecord:
        """Append a :class:`StepRecord` for the current model and return it."""
        count = sum(1 for r in self.records if r.kind == kind) + 1
        name = kind if count == 1 else f"{kind}#{count}"
        metrics = self.measure() if measure else {}
        if seconds is not None:
            metrics["seconds"] = round(seconds, 3)
        rec = StepRecord(name=name, kind=kind, metrics=metrics, details=details or {})
        self.records.append(rec)
        return rec

    def fresh_baseline_copy(self) -> nn.Module:
        """A deep copy of the original model, e.g. to run a comparison without touching ``baseline``."""
        return copy.deepcopy(self.baseline)


def now() -> float:
    """Monotonic seconds, for step timing."""
    return time.perf_counter()
