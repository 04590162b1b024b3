"""The step registry: one place where recipe step names map to (config class, handler).

A step module declares a frozen :class:`compress.config.Config` subclass for its options, a
:class:`compress.records.StepDetails` subclass for what it reports, and registers a handler
``(ctx: RunContext, cfg) -> Details`` with :func:`register_step`. The returned record is the step's ``details``
in the run record and the report.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from ..config import Config
from ..records import StepDetails

__all__ = ["StepSpec", "register_step", "get_step", "list_steps", "STEP_MODULES"]

# Modules that register steps when imported. Kept explicit so the registry is complete without import side
# effects scattered over the package.
STEP_MODULES = (
    "compress.training.steps",
    "compress.analysis.step",
    "compress.transforms.steps",
    "compress.reporting.step",
    "compress.planning.step",
)


@dataclass(frozen=True)
class StepSpec:
    """One registered step: its recipe name, options type, details type, handler and one-line doc."""

    name: str
    config: type[Config]
    details: type[StepDetails]
    handler: Callable[[Any, Any], StepDetails]
    doc: str


_STEPS: dict[str, StepSpec] = {}


def register_step(name: str, config: type[Config], details: type[StepDetails]) -> Callable:
    """Decorator: register ``handler(ctx, cfg) -> details`` as recipe step ``name`` with options ``config``."""

    def decorate(handler: Callable[[Any, Any], StepDetails]) -> Callable[[Any, Any], StepDetails]:
        if name in _STEPS and _STEPS[name].handler is not handler:
            raise ValueError(f"recipe step {name!r} registered twice")
        doc = (handler.__doc__ or "").strip().splitlines()
        _STEPS[name] = StepSpec(name, config, details, handler, doc[0] if doc else "")
        return handler

    return decorate


def _load_all() -> None:
    for module in STEP_MODULES:
        importlib.import_module(module)


def get_step(name: str) -> StepSpec:
    """Return the registered step ``name`` (KeyError when unknown)."""
    _load_all()
    return _STEPS[name]


def list_steps() -> list[str]:
    """Names of all registered recipe steps, sorted."""
    _load_all()
    return sorted(_STEPS)
