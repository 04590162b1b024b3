"""The state a recipe run carries from step to step."""
from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .records import StepDetails, StepRecord

if TYPE_CHECKING:  # imported lazily at run time to keep `import compress` light
    from .data import DataBundle

__all__ = ["StepRecord", "RunContext"]  # StepRecord lives in compress.records


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
        verbose: progress bars and step lines on (already ``False`` on ranks other than 0).
        resume: the step being executed continues a killed run (its checkpoint may be picked up).
        baseline_origin: where the baseline came from (see :class:`~compress.records.BaselineDetails`).
        artifacts_step: index of the step whose model the written artifacts hold (``None``: none written).
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
    verbose: bool = True
    resume: bool = False
    baseline_origin: dict[str, Any] = field(default_factory=dict)
    artifacts_step: int | None = None

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
                       verbose=self.verbose)
        return {"params": c.params, "macs": c.macs, **acc.summary()}

    def calibration(self, batches: int | None, *, split: str = "calib") -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``batches`` batches of ``split`` (``None``: all) as ``(images, labels)`` on :attr:`device`.

        The one way steps get calibration data: the calibration and val loaders are not shuffled, so every
        rank of a distributed run sees the same batches. An absent split (``val: 0``) gives ``[]``.

        Returns:
            ``[(images (B, C, H, W), labels (B,))]``.
        """
        loader = getattr(self.data, split, None)
        if loader is None:
            return []
        return [(x.to(self.device), y.to(self.device)) for x, y, *_ in itertools.islice(loader, batches)]

    def record(self, kind: str, details: StepDetails | None = None, *, seconds: float | None = None,
               measure: bool = True) -> StepRecord:
        """Append a :class:`StepRecord` for the current model and return it."""
        count = sum(1 for r in self.records if r.kind == kind) + 1
        name = kind if count == 1 else f"{kind}#{count}"
        metrics = self.measure() if measure else {}
        if seconds is not None:
            metrics["seconds"] = round(seconds, 3)
        rec = StepRecord(name=name, kind=kind, metrics=metrics, details=details)
        self.records.append(rec)
        return rec

    def model_spec(self) -> dict[str, Any] | None:
        """How to rebuild the original architecture (``None`` for an in-memory model, which is pickled, and for
        a context built without a recipe)."""
        if self.recipe is None or self.baseline_origin.get("source") == "in-memory":
            return None
        return self.recipe.model.spec()

    def write_artifacts(self, notes: list[str]) -> dict[str, Any]:
        """Write the current model's deploy artifacts into :attr:`out_dir` (:func:`compress.artifacts.write_artifacts`)
        and remember which step's model they hold (:attr:`artifacts_step`); returns their records."""
        from .artifacts import write_artifacts

        records = write_artifacts(self.model, self.example_inputs, self.out_dir,
                                  preprocessing=self.data.preprocessing, spec=self.model_spec(), notes=notes)
        self.artifacts_step = self.step_index
        return records

    def fresh_baseline_copy(self) -> nn.Module:
        """A deep copy of the original model, e.g. to run a comparison without touching ``baseline``."""
        return copy.deepcopy(self.baseline)


def now() -> float:
    """Monotonic seconds, for step timing."""
    return time.perf_counter()
