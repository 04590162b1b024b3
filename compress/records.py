"""Typed step records: what a recipe step hands the run record and the report, one name per field.

Every registered step declares a :class:`StepDetails` subclass (``register_step(name, Config, Details)``) and its
handler returns an instance. The report reads those fields by name (a renamed field fails loudly instead of
leaving a column empty); ``run.json`` and ``report.json`` hold :meth:`StepDetails.to_plain`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .jsonable import jsonable

__all__ = ["StepDetails", "StepRecord", "BaselineDetails"]


@dataclass(frozen=True)
class StepDetails:
    """Base of every step's details (subclasses are frozen dataclasses; their fields are the record)."""

    def to_plain(self) -> dict[str, Any]:
        """Strict-JSON form for ``run.json`` / ``report.json`` (default: every field, recursively)."""
        return {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def report_notes(self) -> list[str]:
        """Lines the report's Notes show for this step: what it left undone and why (default: none)."""
        return []


@dataclass(frozen=True)
class BaselineDetails(StepDetails):
    """Where the baseline came from.

    Attributes:
        origin: ``{"source": "checkpoint" | "cache" | "trained", "path": ..., ...}`` (see
            :func:`compress.baseline.obtain_baseline`).
    """

    origin: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepRecord:
    """What one recipe step did and what the model looked like after it.

    Attributes:
        name: unique name in the run, e.g. ``"prune#2"``.
        kind: the registered step name, e.g. ``"prune"``.
        metrics: accuracy (top1/top5 on the test split), params, macs, seconds taken.
        details: the step's typed record (``None`` for a step that reports nothing).
    """

    name: str
    kind: str
    metrics: dict[str, Any] = field(default_factory=dict)
    details: StepDetails | None = None

    def to_plain(self) -> dict[str, Any]:
        """Strict-JSON form: ``{"name", "kind", "metrics", "details"}``."""
        return {"name": self.name, "kind": self.kind, "metrics": jsonable(self.metrics),
                "details": self.details.to_plain() if self.details is not None else {}}
