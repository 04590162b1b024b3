"""Strict parsing of plain data (from YAML) into frozen dataclasses.

Every config in ``compress`` is a frozen dataclass deriving from :class:`Config`. :func:`parse` checks keys and
types against the dataclass' annotations and then calls each config's :meth:`Config.validate`, so a bad value
fails with ``path.to.field: expected ..., got ...`` before anything runs.
"""
from __future__ import annotations

import dataclasses
import math
import types
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError

__all__ = ["MAX_THREADS", "MAX_BATCH", "MAX_RUNS", "Config", "parse", "parse_fields", "check", "to_plain", "join_path",
           "options_from"]

T = TypeVar("T", bound="Config")


# Upper bounds shared by configs: torch.set_num_threads crashes the process on absurd counts, and absurd batch
# sizes or run counts only fail later (out of memory) or never finish.
MAX_THREADS = 1024
MAX_BATCH = 65536
MAX_RUNS = 100_000

@dataclasses.dataclass(frozen=True)
class Config:
    """Base of all configs: a frozen dataclass that validates itself after parsing.

    Subclasses override :meth:`validate` and call :func:`check` for value constraints.
    """

    def validate(self) -> None:
        """Raise :class:`ConfigError` (field relative to this config) when a value is out of range."""

    @classmethod
    def from_dict(cls: type[T], data: Any, *, file: str | None = None, path: str = "") -> T:
        """Build the config from plain data, strictly (what :func:`parse` calls; override to parse a config
        whose keys depend on its values, then use :func:`parse_fields` for the fixed part)."""
        return parse_fields(cls, data, file=file, path=path)

    def plain_items(self) -> list[tuple[str, Any]]:
        """``(key, value)`` pairs :func:`to_plain` writes, the inverse of :meth:`from_dict` (default: the
        fields)."""
        return [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)]


def options_from(cls: type[Any], options: Any, shorthand: dict[str, Any], *, who: str) -> Any:
    """``options`` (an instance of the dataclass ``cls``), or ``cls(**shorthand)`` from a function's keywords.

    The one way a public function takes either a config object or its fields as keywords (``prune(model, x,
    ratio=0.5)``); giving both, or a keyword that is not a field, is refused, and a field's bad value reads
    ``WHO.FIELD: expected ..., got ...``.

    Raises:
        CompressError: both given or an unknown keyword; ConfigError (a CompressError) for a bad value.
    """
    from .errors import CompressError

    if options is not None and shorthand:
        raise CompressError(f"{who}: give {cls.__name__} or {', '.join(shorthand)}, not both")
    if options is not None:
        if not isinstance(options, cls):
            raise CompressError(f"{who}: expected a {cls.__name__}, got {type(options).__name__}")
        return options
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in shorthand if k not in known]
    if unknown:
        raise CompressError(f"{who}: unknown option {unknown[0]!r}; expected one of {', '.join(sorted(known))}")
    try:
        return cls(**shorthand)
    except ConfigError as err:
        raise err.located(prefix=who) from None


def check(condition: bool, field: str, expected: str, got: Any) -> None:
    """Raise ``ConfigError(field, expected, got)`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(field, expected, got)


def join_path(path: str, key: str | int) -> str:
    """``path.key`` (``path[key]`` for list indices and keys that are not plain names)."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not key or not key.isprintable() or any(c in key for c in " .[]"):
        return f"{path}[{key!r}]"  # '' or 'layer1.*' would make an ambiguous (or empty) dotted path
    return f"{path}.{key}" if path else key


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        return f"a list of {_describe(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping with keys " + ", ".join(f.name for f in dataclasses.fields(tp))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _got(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return f"<{type(value).__name__}>"
    if isinstance(value, str) and value.startswith("<"):
        return f"<the string {value!r}>"  # ConfigError prints "<...>" verbatim: quote the user's text
    return value


def _finite_float(value: int | float) -> float | None:
    """``value`` as a finite float, or ``None`` (NaN, infinities, integers beyond the float range)."""
    try:
        number = float(value)
    except OverflowError:  # YAML integers are unbounded: 10**400 has no float
        return None
    return number if math.isfinite(number) else None


def _convert_key(tp: Any, key: Any, path: str, file: str | None) -> Any:
    try:
        return _convert(tp, key, path, file)
    except ConfigError:
        raise ConfigError(join_path(path, str(key)), f"{_describe(tp)} as the key", _got(key), file=file) from None


def _convert(tp: Any, value: Any, path: str, file: str | None) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(path, "null", _got(value), file=file)
    if origin in (Union, types.UnionType):
        last: ConfigError | None = None
        for arg in get_args(tp):
            try:
                return _convert(arg, value, path, file)
            except ConfigError as err:
                last = err
        if last is not None and last.field != path:
            raise last  # the value had the right shape but a nested field was wrong
        raise ConfigError(path, _describe(tp), _got(value), file=file)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in get_args(tp)):
            return value
        raise ConfigError(path, _describe(tp), _got(value), file=file)
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, file=file, path=path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, _describe(tp), _got(value), file=file)
        args = get_args(tp)
        item = args[0] if args else Any
        items = [_convert(item, v, join_path(path, i), file) for i, v in enumerate(value)]
        return tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, "a mapping", _got(value), file=file)
        key_t, val_t = get_args(tp) or (Any, Any)
        return {_convert_key(key_t, k, path, file): _convert(val_t, v, join_path(path, str(k)), file)
                for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = _finite_float(value)
            if number is None:
                raise ConfigError(path, "a finite number", value if isinstance(value, float) else "<a huge integer>",
                                  file=file)
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported config annotation {tp!r} at {path}")
    raise ConfigError(path, _describe(tp), _got(value), file=file)


def parse(cls: type[T], data: Any, *, file: str | None = None, path: str = "") -> T:
    """Build ``cls`` from a mapping, strictly (a :class:`Config` through its :meth:`Config.from_dict`).

    Args:
        cls: a dataclass (usually a :class:`Config`).
        data: the mapping read from YAML (``None`` means empty).
        file: the file name used in error messages.
        path: dotted path of ``data`` inside the file, used in error messages.

    Raises:
        ConfigError: unknown key, missing required key, wrong type, or a failed :meth:`Config.validate`.
    """
    if isinstance(cls, type) and issubclass(cls, Config):
        return cls.from_dict(data, file=file, path=path)
    return parse_fields(cls, data, file=file, path=path)


def parse_fields(cls: type[T], data: Any, *, file: str | None = None, path: str = "") -> T:
    """:func:`parse` by ``cls``'s dataclass fields alone (keys, types, defaults, then :meth:`Config.validate`)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path or "<top>", _describe(cls), _got(data), file=file)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(join_path(path, str(unknown[0])), "one of the keys " + ", ".join(fields), "an unknown key",
                          file=file)
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], join_path(path, name), file)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(join_path(path, name), f"a value ({_describe(hints[name])})", "nothing (missing)",
                              file=file)
    try:
        obj = cls(**kwargs)  # configs that validate on construction raise here
        if isinstance(obj, Config):
            obj.validate()
    except ConfigError as err:
        raise err.located(file, path) from None
    return obj


def to_plain(obj: Any, *, str_keys: bool = True) -> Any:
    """Turn a config (dataclasses, tuples) back into YAML/JSON-friendly data.

    Args:
        obj: a config, or any nesting of lists, tuples and dicts.
        str_keys: turn mapping keys into strings, as a JSON round trip would (``False`` keeps them, so that
            parsing the result gives back ``obj``).
    """
    if isinstance(obj, Config):
        return {k: to_plain(v, str_keys=str_keys) for k, v in obj.plain_items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name), str_keys=str_keys) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, str_keys=str_keys) for v in obj]
    if isinstance(obj, dict):
        return {(str(k) if str_keys else k): to_plain(v, str_keys=str_keys) for k, v in obj.items()}
    return obj
