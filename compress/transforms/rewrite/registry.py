"""Rewrite registry: one config type per rewrite kind, one handler per config type, one module walker.

In the style of torchao's ``quantize_``: a rewrite kind is a small frozen :class:`RewriteConfig` (its concrete
per-layer parameters, validated) plus a handler ``(conv, config) -> nn.Module`` registered for that config type
with :func:`register_handler`. :func:`replace_modules` is the one walker that swaps rewrites into a model
(through :func:`compress.module_tree.set_module`); everything else builds new modules and leaves the model alone.

The config class is the single source of truth about its kind; everything else reads it from here:

* ``Options``: a :class:`KindOptions` dataclass of the options the kind takes from :func:`~compress.rewrite`
  and from the recipe's ``rewrite`` step (parsed and validated once, with the recipe's wording);
* ``plan`` resolves those options for one conv; ``budget_options`` (kinds whose ``Options`` has a
  ``macs_target``) lists a conv's choices for a whole-model MACs budget;
* for the latency planner (:mod:`compress.planning`): ``planner_values`` (the parameter values it tries; empty:
  the kind is not a planner form) and ``form_options``, ``form_fits``, ``form_macs``, ``form_params``,
  ``form_error2`` and ``form_module``, which price and build one candidate at a conv shape. The defaults build
  the real rewrite and count/measure it, so a new kind only has to declare ``planner_values`` and
  ``form_options``; the built-in kinds override them with closed forms.

Adding a kind is one module defining its config and handler (see ``kinds/``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, TypeVar

import torch
from torch import nn

from ...config import Config
from ...module_tree import set_module
from ...errors import CompressError, ConfigError

__all__ = [
    "RewriteConfig", "KindOptions", "Handler", "register_handler", "unregister", "handler_for", "config_for_kind",
    "config_for_options", "kinds", "planner_kinds", "apply_config", "replace_modules", "conv_problem",
]

Handler = Callable[[nn.Conv2d, "RewriteConfig"], nn.Module]
C = TypeVar("C", bound="RewriteConfig")

_HANDLERS: dict[type, Handler] = {}
_KINDS: dict[str, type["RewriteConfig"]] = {}


@dataclasses.dataclass(frozen=True)
class KindOptions(Config):
    """The options one rewrite kind takes from :func:`~compress.rewrite` and the recipe (subclasses add fields).

    Fields default to the kind's defaults (``None``: resolved per layer by the kind's ``plan``). Built directly
    or parsed strictly from a recipe (:func:`compress.config.parse`), it validates itself either way.
    """

    def __post_init__(self) -> None:
        self.validate()

    def kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments of the kind's ``plan``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def exclusive(self, *names: str) -> None:
        """Raise :class:`ConfigError` when more than one of ``names`` is set (not ``None``)."""
        given = [n for n in names if getattr(self, n) is not None]
        if len(given) > 1:
            raise ConfigError(given[1], f"null when {given[0]} is set (give only one of {', '.join(names)})",
                              getattr(self, given[1]))


@dataclasses.dataclass(frozen=True)
class RewriteConfig(Config):
    """Concrete parameters of one rewrite of one conv (subclasses add fields and ``kind``).

    Class attributes:
        kind: the recipe name of the rewrite (``"grouped"``, ...).
        Options: the :class:`KindOptions` subclass of the options :meth:`plan` accepts from the model-level
            applier and the recipe.
        planner_values: parameter values the latency planner tries as forms of this kind (empty: none).
        example_options: options giving a representative rewrite of a typical conv (>= 16 channels): the test
            matrix and the coverage benchmark run every registered kind with them.
        reads_producer: :meth:`plan` also takes ``producer``, the qualified name of the conv whose output
            channels are this conv's inputs (the applier finds it when given an analysis and example inputs).
        reads_inputs: :meth:`plan` also takes ``moments``, the conv's input patch moments on calibration data
            (the applier measures them when given ``calib``; ``None`` without).
    """

    kind: ClassVar[str] = ""
    Options: ClassVar[type[KindOptions]] = KindOptions
    planner_values: ClassVar[tuple[int | float, ...]] = ()
    example_options: ClassVar[dict[str, Any]] = {}
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
    def option_names(cls) -> tuple[str, ...]:
        """Names of the options the kind takes (the fields of :attr:`Options`)."""
        return tuple(f.name for f in dataclasses.fields(cls.Options))

    @classmethod
    def parse_options(cls, options: dict[str, Any]) -> KindOptions:
        """``options`` (keyword arguments of :func:`~compress.rewrite`) parsed strictly into :attr:`Options`.

        Raises:
            CompressError: an unknown option, a wrong type or value, e.g. ``rewrite kind 'separable': T: ...``.
        """
        from ...config import parse  # deferred: config imports nothing from transforms, keep it that way

        try:
            return parse(cls.Options, dict(options))
        except ConfigError as err:
            raise CompressError(f"rewrite kind {cls.kind!r}: {err}") from None

    @classmethod
    def check_options(cls, **options: Any) -> None:
        """Raise :class:`CompressError` for option values or combinations that are wrong for every layer."""
        cls.parse_options({k: v for k, v in options.items() if k in cls.option_names()})

    @classmethod
    def plan(cls: type[C], conv: nn.Conv2d, *, name: str = "", analysis: Any = None, **options: Any) -> C:
        """Resolve applier options (budgets, ``"auto"``) into concrete parameters for ``conv``."""
        cls.check_options(**options)
        return cls(**options)

    @classmethod
    def budget_options(cls, conv: nn.Conv2d, *, positions: int, moments: torch.Tensor | None = None) -> list[Any]:
        """A conv's choices for a whole-model MACs budget (kinds whose :attr:`Options` has ``macs_target``).

        Returns:
            :class:`~compress.transforms.rewrite.allocate.Option` s: each cheaper parameter choice
            (``value``: the ``plan`` keywords, ``error``: its squared relative error) and the dense conv itself
            (``value=None``, no error), at ``positions`` output positions.
        """
        raise CompressError(f"rewrite kind {cls.kind!r} has no MACs budget (macs_target)")

    # --- the latency planner's view: one candidate form ``(kind, value)`` at a conv shape ---------------------

    @classmethod
    def form_options(cls, value: int | float, in_channels: int) -> dict[str, Any]:
        """The :meth:`plan` keywords of the planner form ``value`` for a conv with ``in_channels`` inputs."""
        raise NotImplementedError(f"rewrite kind {cls.kind!r} declares planner_values but no form_options")

    @classmethod
    def form_module(cls, shape: Any, value: int | float, *, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> nn.Module:
        """The replacement of a random dense conv of ``shape`` (a :class:`~compress.planning.shapes.ConvShape`)
        by the form ``value``: what the planner times."""
        conv = shape.build(device=device)  # float32: the rewrites' factorisations need a float weight
        new = apply_config(conv, cls.plan(conv, **cls.form_options(value, shape.in_channels)))
        return new.to(dtype=dtype)

    @classmethod
    def form_fits(cls, shape: Any, value: int | float) -> bool:
        """Whether the form ``value`` is defined for a conv of ``shape`` (and saves something)."""
        conv = shape.build(device="meta")
        if cls.eligibility(conv) is not None:
            return False
        try:
            cls.plan(conv, **cls.form_options(value, shape.in_channels)).check_layer(conv)
        except (CompressError, NotImplementedError, RuntimeError):
            return False
        return True

    @classmethod
    def form_macs(cls, shape: Any, value: int | float) -> int:
        """Per-sample MACs of the form ``value`` at ``shape`` (default: counted on the built module)."""
        from .apply import conv_macs  # deferred: apply imports this module

        module = cls.form_module(shape, value)
        return conv_macs(module, torch.zeros(1, shape.in_channels, *shape.in_hw))

    @classmethod
    def form_params(cls, shape: Any, value: int | float) -> int:
        """Parameter count of the form ``value`` at ``shape`` (default: counted on the built module)."""
        return sum(p.numel() for p in cls.form_module(shape, value).parameters())

    @classmethod
    def form_error2(cls, conv: nn.Conv2d, value: int | float, *, moments: torch.Tensor | None = None) -> float:
        """Squared relative error of rewriting the real ``conv`` into the form ``value`` (default: the weight
        error of the built rewrite; ``moments``, the conv's input patch moments, for data-aware kinds)."""
        from .decompose import relative_error  # deferred: keeps the registry free of the decompositions

        with torch.no_grad():
            config = cls.plan(conv, **cls.form_options(value, conv.in_channels))
            new = apply_config(conv, config)
            return relative_error(config.effective_weight(conv, new), conv.weight) ** 2

    def describe(self, conv: nn.Conv2d) -> dict[str, Any]:
        """JSON-friendly parameters for the per-layer record."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def effective_weight(self, conv: nn.Conv2d, new: nn.Module) -> torch.Tensor:
        """The dense ``conv``-shaped weight that ``new`` (built from ``conv`` with this config) computes."""
        raise NotImplementedError


def conv_problem(conv: nn.Module, *, dense: bool = False) -> str | None:
    """Reasons shared by all rewrites for leaving a module alone (``None``: a plain, supported Conv2d; with
    ``dense``, also one with ``groups == 1``)."""
    if type(conv) is not nn.Conv2d:  # subclasses may override forward: never mangle them
        return f"unsupported module type {type(conv).__name__} (only plain nn.Conv2d is rewritten)"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} is not supported (only 'zeros')"
    if isinstance(conv.padding, str):
        return f"string padding {conv.padding!r} is not supported (give explicit padding)"
    if dense and conv.groups != 1:
        return f"not a dense conv (groups={conv.groups}: already grouped or depthwise)"
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


def unregister(config_cls: type[RewriteConfig]) -> None:
    """Remove a registered kind (for plug-ins and tests that register a kind of their own)."""
    _HANDLERS.pop(config_cls, None)
    if _KINDS.get(config_cls.kind) is config_cls:
        del _KINDS[config_cls.kind]


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


def config_for_options(options: KindOptions) -> type[RewriteConfig]:
    """The config class whose ``Options`` is ``type(options)`` (a kind given by its options object)."""
    for config_cls in _KINDS.values():
        if config_cls.Options is type(options):
            return config_cls
    raise CompressError(f"{type(options).__name__} is not the Options of a registered rewrite kind "
                        f"(known: {', '.join(sorted(_KINDS))})")


def kinds() -> list[str]:
    """Registered rewrite kinds, sorted."""
    return sorted(_KINDS)


def planner_kinds() -> list[str]:
    """Registered kinds the latency planner can use as forms (those with ``planner_values``), sorted."""
    return [k for k in kinds() if _KINDS[k].planner_values]


def apply_config(conv: nn.Conv2d, config: RewriteConfig) -> nn.Module:
    """Check ``config`` against ``conv`` and build the replacement (``conv`` itself is not modified)."""
    config.check_layer(conv)
    return handler_for(config)(conv, config)


def replace_modules(model: nn.Module, handler: Callable[[str, nn.Module], nn.Module | None],
                    filter_fn: Callable[[str, nn.Module], bool]) -> list[str]:
    """Swap every submodule selected by ``filter_fn`` for ``handler(name, module)`` (the one module walker).

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
        set_module(model, name, new)
        replaced.append(name)
    return replaced

