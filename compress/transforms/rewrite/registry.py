"""Rewrite registry: one config type per rewrite kind, one handler per config type, one module walker.

In the style of torchao's ``quantize_``: a rewrite kind is a small frozen :class:`RewriteConfig` (its concrete
per-layer parameters, validated) plus a handler ``(conv, config) -> nn.Module`` registered for that config type
with :func:`register_handler`. :func:`replace_modules` is the only place that swaps modules into a model
(``setattr`` on the parent); everything else builds new modules and leaves the model alone.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, TypeVar

import torch
from torch import nn

from ...config import Config
from ...errors import CompressError

__all__ = [
    "RewriteConfig", "Handler", "register_handler", "handler_for", "config_for_kind", "kinds", "apply_config",
    "replace_modules", "conv_problem",
]

Handler = Callable[[nn.Conv2d, "RewriteConfig"], nn.Module]
C = TypeVar("C", bound="RewriteConfig")

_HANDLERS: dict[type, Handler] = {}
_KINDS: dict[str, type["RewriteConfig"]] = {}


@dataclasses.dataclass(frozen=True)
class RewriteConfig(Config):
    """Concrete parameters of one rewrite of one conv (subclasses add fields and ``kind``).

    Class attributes:
        kind: the recipe name of the rewrite (``"grouped"``, ...).
        options: keyword options :meth:`plan` accepts from the model-level applier.
        reads_producer: :meth:`plan` also takes ``producer``, the qualified name of the conv whose output
            channels are this conv's inputs (the applier finds it when given an analysis and example inputs).
        reads_inputs: :meth:`plan` also takes ``moments``, the conv's input patch moments on calibration data
            (the applier measures them when given ``calib``; ``None`` without).
    """

    kind: ClassVar[str] = ""
    options: ClassVar[tuple[str, ...]] = ()
    reads_producer: ClassVar[bool] = False
    reads_inputs: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.validate()  # built directly (not only via `parse`), so validate on construction

    @classmethod
    def eligibility(cls, conv: nn.Conv2d) -> str | None:
        """Why ``conv`` cannot take this rewrite at all (``None`` when it can)."""
        return conv_problem(conv)

    def check_layer(self, conv: nn.Conv2d) -> None:
        """Raise :class:`CompressError` when these parameters do not fit ``conv`` (e.g. groups ∤ channels)."""
        reason = self.eligibility(conv)
        if reason:
            raise CompressError(f"{self.kind} rewrite: {reason}")

    @classmethod
    def check_options(cls, **options: Any) -> None:
        """Raise :class:`CompressError` for option values or combinations that are wrong for every layer."""

    @classmethod
    def plan(cls: type[C], conv: nn.Conv2d, *, name: str = "", analysis: Any = None, **options: Any) -> C:
        """Resolve applier options (budgets, ``"auto"``) into concrete parameters for ``conv``."""
        cls.check_options(**options)
        return cls(**options)

    def describe(self, conv: nn.Conv2d) -> dict[str, Any]:
        """JSON-friendly parameters for the per-layer record."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def effective_weight(self, conv: nn.Conv2d, new: nn.Module) -> torch.Tensor:
        """The dense ``conv``-shaped weight that ``new`` (built from ``conv`` with this config) computes."""
        raise NotImplementedError


def conv_problem(conv: nn.Module) -> str | None:
    """Reasons shared by all rewrites for leaving a module alone (``None``: a plain, supported Conv2d)."""
    if type(conv) is not nn.Conv2d:  # subclasses may override forward: never mangle them
        return f"unsupported module type {type(conv).__name__} (only plain nn.Conv2d is rewritten)"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} is not supported (only 'zeros')"
    if isinstance(conv.padding, str):
        return f"string padding {conv.padding!r} is not supported (give explicit padding)"
    return None


def register_handler(config_cls: type[C]) -> Callable[[Handler], Handler]:
    """Decorator: register ``handler(conv, config) -> nn.Module`` for ``config_cls`` (and its ``kind``)."""

    def decorate(handler: Handler) -> Handler:
        if config_cls in _HANDLERS and _HANDLERS[config_cls] is not handler:
            raise ValueError(f"a handler for {config_cls.__name__} is already registered")
        _HANDLERS[config_cls] = handler
        _KINDS[config_cls.kind] = config_cls
        return handler

    return decorate


def handler_for(config: RewriteConfig) -> Handler:
    """The handler registered for ``type(config)``."""
    try:
        return _HANDLERS[type(config)]
    except KeyError:
        raise CompressError(f"no rewrite handler registered for {type(config).__name__}") from None


def config_for_kind(kind: str) -> type[RewriteConfig]:
    """The config class registered under ``kind``; :class:`CompressError` listing the kinds when unknown."""
    if kind not in _KINDS:
        raise CompressError(f"unknown rewrite kind {kind!r}; expected one of {', '.join(sorted(_KINDS))}")
    return _KINDS[kind]


def kinds() -> list[str]:
    """Registered rewrite kinds, sorted."""
    return sorted(_KINDS)


def apply_config(conv: nn.Conv2d, config: RewriteConfig) -> nn.Module:
    """Check ``config`` against ``conv`` and build the replacement (``conv`` itself is not modified)."""
    config.check_layer(conv)
    return handler_for(config)(conv, config)


def replace_modules(model: nn.Module, handler: Callable[[str, nn.Module], nn.Module | None],
                    filter_fn: Callable[[str, nn.Module], bool]) -> list[str]:
    """Swap every submodule selected by ``filter_fn`` for ``handler(name, module)``; the only module setter.

    Modules inside an already replaced module are not visited. ``handler`` may return ``None`` (or the
    module itself) to keep a module.

    Args:
        model: the model, modified in place (the root itself is never replaced).
        handler: ``(qualified_name, module) -> new module or None``.
        filter_fn: ``(qualified_name, module) -> bool``.

    Returns:
        Qualified names of the replaced modules, in visiting order.
    """
    targets = [(n, m) for n, m in model.named_modules() if n and filter_fn(n, m)]
    replaced: list[str] = []
    for name, module in targets:
        if any(name.startswith(done + ".") for done in replaced):
            continue
        new = handler(name, module)
        if new is None or new is module:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, new)
        replaced.append(name)
    return replaced

