"""The step registry: one place where recipe step names map to (config class, handler).

A step module declares a frozen :class:`compress.config.Config` subclass for its options and registers a
handler ``(ctx: RunContext, cfg) -> dict`` with :func:`register_step`. The returned dict is stored as the
step's ``details`` in the run record and the report.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from ..config import Config

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
    name: str
    config: type[Config]
    handler: Callable[[Any, Any], dict]
    doc: str


_STEPS: dict[str, StepSpec] = {}


def register_step(name: str, config: type[Config]) -> Callable:
    """Decorator: register ``handler(ctx, cfg) -> dict`` as recipe step ``name`` with options ``config``."""

    def decorate(handler: Callable[[Any, Any], dict]) -> Callable[[Any, Any], dict]:
        if name in _STEPS and _STEPS[name].handler is not handler:
            raise ValueError(f"recipe step {name!r} registered twice")
        _STEPS[name] = StepSpec(name, config, handler, (handler.__doc__ or "").strip().splitlines()[0:1] and
                                (handler.__doc__ or "").strip().splitlines()[0])
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
