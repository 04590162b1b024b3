"""The recipe file: schema, loading, ``--set`` overrides, strict validation."""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..config import MAX_THREADS, Config, check, parse, to_plain
from ..data.config import DataConfig
from ..errors import CompressError, ConfigError
from ..models.config import ModelConfig
from .registry import get_step, list_steps

__all__ = ["Recipe", "BaselineConfig", "StepEntry", "load_recipe", "parse_recipe", "apply_overrides",
           "read_recipe_data", "recipe_to_data", "DEFAULT_RECIPE"]

DEFAULT_RECIPE = "default.yaml"  # packaged next to this module; recipes/default.yaml links to it
OVERRIDES = "--set"  # the "file" named in errors that a --set override caused
MAX_SEED = 2**32 - 1  # NumPy's limit; per-step seeds add a few thousand, still far below torch's 2**64


@dataclass(frozen=True)
class BaselineConfig(Config):
    """How to obtain the original (uncompressed) model when ``model.checkpoint`` is not given.

    Attributes:
        train: training options (see ``compress.training.TrainConfig``) as a mapping.
        cache: reuse a baseline trained earlier with the same model/data/training config and seed.
        cache_dir: where cached baselines live (default ``$COMPRESS_CACHE`` or ``~/.cache/compress``).
    """

    train: dict[str, Any] = field(default_factory=dict)
    cache: bool = True
    cache_dir: str | None = None

    def validate(self) -> None:
        # Checked now, not when the baseline is trained: a bad value must fail before anything runs.
        from ..training.config import TrainConfig

        parse(TrainConfig, self.train, path="train")


@dataclass(frozen=True)
class StepEntry:
    """One parsed recipe step: its registered name and its validated config."""

    name: str
    config: Config


@dataclass(frozen=True)
class Recipe(Config):
    """A whole run. ``steps`` are executed in order on the model (the baseline stays untouched)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    steps: tuple[Any, ...] = ()
    seed: int = 0
    out: str = "runs/default"
    device: str = "auto"
    threads: int | None = None

    def validate(self) -> None:
        check(re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", self.device) is not None, "device",
              "auto, cpu, cuda or cuda:N", self.device)
        # torch.set_num_threads accepts any count and crashes the process on absurd ones
        check(self.threads is None or 1 <= self.threads <= MAX_THREADS, "threads",
              f"an integer in 1..{MAX_THREADS} or null", self.threads)
        check(0 <= self.seed <= MAX_SEED, "seed", f"an integer in 0..{MAX_SEED}", self.seed)
        check(bool(self.out.strip()), "out", "a directory path (not empty)", self.out)
        check(bool(self.steps), "steps", "a non-empty list of steps", list(self.steps))


def _parse_step(item: Any, index: int, file: str | None) -> StepEntry:
    where = f"steps[{index}]"
    names = list_steps()
    if isinstance(item, str):
        item = {item: None}
    if not isinstance(item, dict) or len(item) != 1:
        raise ConfigError(where, "a mapping with exactly one step name (" + ", ".join(names) + ")",
                          f"<{type(item).__name__}>" if not isinstance(item, str) else item, file=file)
    (name, options), = item.items()
    if name not in names:
        raise ConfigError(f"{where}", "a step name among " + ", ".join(names), name, file=file)
    spec = get_step(name)
    return StepEntry(name, parse(spec.config, options, file=file, path=f"{where}.{name}"))


def parse_recipe(data: Any, *, file: str | None = None) -> Recipe:
    """Validate plain recipe data into a :class:`Recipe` (errors name ``file`` and the field path)."""
    if not isinstance(data, dict):
        raise ConfigError("<top>", "a mapping with keys model, data, baseline, steps, ...",
                          f"<{type(data).__name__}>", file=file)
    raw_steps = data.get("steps")
    if raw_steps is not None and not isinstance(raw_steps, list):
        raise ConfigError("steps", "a list of steps", f"<{type(raw_steps).__name__}>", file=file)
    body = {k: v for k, v in data.items() if k != "steps"}
    recipe = parse(Recipe, {**body, "steps": ["placeholder"]}, file=file)
    steps = tuple(_parse_step(item, i, file) for i, item in enumerate(raw_steps or []))
    if not steps:
        raise ConfigError("steps", "a non-empty list of steps (" + ", ".join(list_steps()) + ")", raw_steps,
                          file=file)
    return Recipe(model=recipe.model, data=recipe.data, baseline=recipe.baseline, steps=steps, seed=recipe.seed,
                  out=recipe.out, device=recipe.device, threads=recipe.threads)


def _shown(text: str) -> str:
    """``text`` as a field name in a one-line message (quoted when empty or holding e.g. a newline)."""
    return text if text and text.isprintable() else repr(text)


def _set_path(data: dict, dotted: str, value: Any, file: str) -> None:
    parts = dotted.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not (part.isascii() and part.isdigit()) or int(part) >= len(node):
                raise ConfigError(_shown(".".join(parts[:i + 1])), f"a list index below {len(node)}", part,
                                  file=file)
            key: Any = int(part)
        elif isinstance(node, dict):
            key = part
        else:
            raise ConfigError(_shown(".".join(parts[:i])), "a mapping or list to set a field in", node, file=file)
        if last:
            node[key] = value
        else:
            if isinstance(node, dict) and node.get(key) is None:
                node[key] = {}  # absent, or a bare `- prune:` whose options are null
            node = node[key]


def apply_overrides(data: dict, overrides: list[str], *, file: str = OVERRIDES) -> dict:
    """Return a copy of ``data`` with ``a.b=value`` overrides applied (values parsed as YAML).

    List items are addressed by index, and a step's options through its name: ``steps.1.prune.ratio=0.3``.
    """
    data = copy.deepcopy(data)
    for item in overrides:
        path, sep, text = item.partition("=")
        if not sep or not path:
            raise ConfigError(_shown(item), "PATH=VALUE (e.g. data.batch_size=64)", item, file=file)
        try:
            value = _yaml_value(text) if text else None
        except (yaml.YAMLError, RecursionError) as err:
            raise ConfigError(_shown(path), "a YAML value", f"<{text!r} ({err.__class__.__name__})>",
                              file=file) from None
        _set_path(data, path, value, file)
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (list, dict)):
                continue  # unhashable: the base class raises its own ConstructorError
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) reads `lr: 1e-3` as the *string* "1e-3" (its floats need a dot); read it as YAML 1.2 does.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _yaml_value(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)


def read_recipe_data(path: str | None) -> tuple[dict, str]:
    """Read a recipe's YAML into plain data; ``None`` reads the packaged default. Returns (data, display name)."""
    if path is None:
        text = resources.files("compress.recipe").joinpath(DEFAULT_RECIPE).read_text()
        name = f"<default recipe {DEFAULT_RECIPE}>"
    else:
        p = Path(path)
        if not p.is_file():
            raise CompressError(f"{path}: recipe file not found" + (" (it is a directory)" if p.is_dir() else ""))
        name = str(path)
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise CompressError(f"{name}: not a UTF-8 text file (byte {err.start}); expected a YAML recipe") from None
        except OSError as err:
            raise CompressError(f"{name}: cannot read the recipe ({err.strerror or err})") from None
    try:
        data = _yaml_value(text)
    except RecursionError:
        raise CompressError(f"{name}: not a usable recipe: nested too deeply") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise CompressError(f"{name}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    if data is None:
        raise ConfigError("<top>", "a recipe mapping (model, data, baseline, steps)", "an empty file", file=name)
    return data, name


def recipe_to_data(recipe: Recipe) -> dict[str, Any]:
    """Plain data that :func:`parse_recipe` turns back into ``recipe`` (steps as ``{name: options}``)."""
    data = to_plain(recipe, str_keys=False)
    data["steps"] = [{entry.name: to_plain(entry.config, str_keys=False)} for entry in recipe.steps]
    return data


def load_recipe(path: str | None = None, *, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe (``None`` = the embedded default)."""
    data, name = read_recipe_data(path)
    if not overrides:
        return parse_recipe(data, file=name)
    if not isinstance(data, dict):
        raise ConfigError("<top>", "a recipe mapping", f"<{type(data).__name__}>", file=name)
    try:
        return parse_recipe(apply_overrides(data, list(overrides)), file=name)
    except ConfigError as err:
        if err.file == name and _caused_by_overrides(err.field, list(overrides), data, name):
            raise ConfigError(err.field, err.expected, err.got, file=OVERRIDES) from None
        raise



def _caused_by_overrides(field: str, overrides: list[str], data: dict, name: str) -> bool:
    """Whether the bad ``field`` comes from an override: it lies at or under an overridden path, or the recipe
    parses without the overrides."""
    dotted = re.sub(r"\[(\d+)\]", r".\1", field)  # steps[1].prune.ratio -> steps.1.prune.ratio
    paths = [item.partition("=")[0] for item in overrides]
    if any(dotted == p or dotted.startswith(p + ".") for p in paths):
        return True
    try:
        parse_recipe(data, file=name)
    except CompressError:
        return False
    return True
