"""Which convs :func:`~compress.transforms.rewrite.apply.rewrite` considers: one validated selection config.

:class:`LayerSelection` holds the options every rewrite kind shares (names, patterns, channel and kernel
filters). ``rewrite(model, kind, select=LayerSelection(...))`` takes it as an object; its fields may also be
given as keyword shorthand beside the kind's own options, and :func:`split_options` sorts the two, so both
spellings go through the same validation and wording.
"""
from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any

from torch import nn

from ...config import Config, check
from ...errors import CompressError, ConfigError
from .registry import KindOptions, RewriteConfig, conv_problem

__all__ = ["LayerSelection", "split_options"]


def _strings(value: Any) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, str) for v in value)


@dataclasses.dataclass(frozen=True)
class LayerSelection(Config):
    """The convs a rewrite considers.

    ``layers`` (exact names) and ``include`` (fnmatch patterns) name the candidates; with neither, every conv is
    a candidate. ``exclude`` patterns drop candidates. A candidate is eligible when it is a plain ``nn.Conv2d``
    with ``min(in, out) >= min_channels``, a kernel in ``kernel_sizes`` (when given) and the kind's own
    requirements. Explicitly named candidates that fail are reported with the reason.

    Attributes:
        layers: exact qualified module names.
        include / exclude: fnmatch patterns over qualified names.
        min_channels: minimum of in and out channels, an integer >= 1.
        kernel_sizes: allowed (square) kernel sizes, e.g. ``(1,)``; ``None``: any.
    """

    layers: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_channels: int = 16
    kernel_sizes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("layers", "include", "exclude", "kernel_sizes"):  # lists given in Python become tuples
            value = getattr(self, name)
            if value is None and name != "kernel_sizes":
                value = ()  # "no names" (the applier's historical default for layers)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(value))
        self.validate()

    def validate(self) -> None:
        for name in ("layers", "include", "exclude"):
            check(_strings(getattr(self, name)), name, "a list of module names or patterns", getattr(self, name))
        check(isinstance(self.min_channels, int) and self.min_channels >= 1, "min_channels", "an integer >= 1",
              self.min_channels)
        check(self.kernel_sizes is None or (isinstance(self.kernel_sizes, tuple) and all(
            isinstance(k, int) and k >= 1 for k in self.kernel_sizes)), "kernel_sizes",
              "null or a list of integers >= 1", self.kernel_sizes)

    def candidates(self, model: nn.Module) -> list[tuple[str, nn.Module, bool]]:
        """``(name, module, explicitly named)`` candidates in module order.

        Raises:
            CompressError: a name in ``layers`` or a pattern in ``include`` that matches nothing.
        """
        names = dict(model.named_modules(remove_duplicate=False))  # a shared module under each of its names
        for name in self.layers:
            if name not in names:
                raise CompressError(f"rewrite: layer {name!r} not found in the model")
        for pattern in self.include:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                raise CompressError(f"rewrite: include pattern {pattern!r} matches no module")
        explicit = bool(self.layers) or bool(self.include)
        out = []
        for name, module in names.items():
            if any(fnmatch.fnmatchcase(name, p) for p in self.exclude):
                continue
            named = name in self.layers
            matched = named or any(fnmatch.fnmatchcase(name, p) for p in self.include)
            if explicit and not matched:
                continue
            if not explicit and not isinstance(module, nn.Conv2d):
                continue
            if not named and not isinstance(module, nn.modules.conv._ConvNd):
                continue  # patterns also match containers and BatchNorms: only convs are reported
            out.append((name, module, explicit))
        return out

    def problem(self, name: str, module: nn.Module, config_cls: type[RewriteConfig],
                shared: set[int]) -> str | None:
        """Why ``module`` (called ``name``; ``shared``: ids of modules with several parents) is not eligible."""
        if not name:
            return "the model itself is a conv: use the per-layer function (e.g. to_grouped) instead"
        reason = conv_problem(module)
        if reason:
            return reason
        if id(module) in shared:
            return "the conv is shared by several parents"
        if min(module.in_channels, module.out_channels) < self.min_channels:
            return (f"fewer than min_channels={self.min_channels} channels (in={module.in_channels}, "
                    f"out={module.out_channels})")
        if self.kernel_sizes is not None and not all(k in self.kernel_sizes for k in module.kernel_size):
            return (f"kernel {module.kernel_size[0]}x{module.kernel_size[1]} not in "
                    f"kernel_sizes={self.kernel_sizes}")
        return config_cls.eligibility(module)


def split_options(config_cls: type[RewriteConfig], options: dict[str, Any], select: LayerSelection | None = None,
                  kind_options: KindOptions | None = None) -> tuple[LayerSelection, KindOptions]:
    """Sort ``rewrite()`` keyword options into the shared :class:`LayerSelection` and the kind's ``Options``.

    ``select`` / ``kind_options``: the objects when the caller built them already (then ``options`` may not
    repeat their fields).

    Raises:
        CompressError: an option neither takes (naming both sets), a selection or kind option given twice, or an
            invalid value (``rewrite: min_channels: expected ...`` / ``rewrite kind 'separable': T: expected ...``).
    """
    shared = [f.name for f in dataclasses.fields(LayerSelection)]
    own = list(config_cls.option_names())
    if kind_options is not None:
        repeated = [k for k in options if k in own]
        if repeated:
            raise CompressError(f"rewrite: {', '.join(repeated)} given beside a {type(kind_options).__name__}; "
                                "set it in the options object")
        own = []
    unknown = [k for k in options if k not in shared and k not in own]
    if unknown:
        raise CompressError(f"rewrite kind {config_cls.kind!r}: unknown option {unknown[0]!r}; expected the kind's "
                            f"{', '.join(own) or '(none)'} or the selection's {', '.join(shared)}")
    given = {k: options[k] for k in options if k in shared}
    if select is not None and given:
        raise CompressError(f"rewrite: give the selection as select= or as {', '.join(given)}, not both")
    if select is None:
        try:
            select = LayerSelection(**given)
        except ConfigError as err:
            raise CompressError(f"rewrite: {err}") from None
    if kind_options is None:
        kind_options = config_cls.parse_options({k: v for k, v in options.items() if k in own})
    return select, kind_options
