"""The recipe file: schema, loading, ``--set`` overrides, strict validation."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, check, parse
from ..data.config import DataConfig
from ..errors import CompressError, ConfigError
from ..models.config import ModelConfig
from .registry import get_step, list_steps

__all__ = ["Recipe", "BaselineConfig", "StepEntry", "load_recipe", "parse_recipe", "apply_overrides",
           "DEFAULT_RECIPE"]

DEFAULT_RECIPE = "default.yaml"  # packaged next to this module; recipes/default.yaml links to it


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
        check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device",
              "auto, cpu, cuda or cuda:N", self.device)
        check(self.threads is None or self.threads >= 1, "threads", "an integer >= 1 or null", self.threads)
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


def _set_path(data: dict, dotted: str, value: Any, file: str) -> None:
    parts = dotted.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(".".join(parts[:i + 1]), f"a list index below {len(node)}", part, file=file)
            key: Any = int(part)
        elif isinstance(node, dict):
            key = part
        else:
            raise ConfigError(".".join(parts[:i]), "a mapping or list to set a field in", node, file=file)
        if last:
            node[key] = value
        else:
            if isinstance(node, dict) and key not in node:
                node[key] = {}
            node = node[key]


def apply_overrides(data: dict, overrides: list[str], *, file: str = "--set") -> dict:
    """Return a copy of ``data`` with ``a.b=value`` overrides applied (values parsed as YAML).

    List items are addressed by index, and a step's options through its name: ``steps.1.prune.ratio=0.3``.
    """
    data = copy.deepcopy(data)
    for item in overrides:
        path, sep, text = item.partition("=")
        if not sep or not path:
            raise ConfigError(item, "PATH=VALUE (e.g. data.batch_size=64)", item, file=file)
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError as err:
            raise ConfigError(path, "a YAML value", f"{text!r} ({err.__class__.__name__})", file=file) from None
        _set_path(data, path, value, file)
    return data


def read_recipe_data(path: str | None) -> tuple[dict, str]:
    """Read a recipe's YAML into plain data; ``None`` reads the packaged default. Returns (data, display name)."""
    if path is None:
        text = resources.files("compress.recipe").joinpath(DEFAULT_RECIPE).read_text()
        name = f"<default recipe {DEFAULT_RECIPE}>"
    else:
        p = Path(path)
        if not p.is_file():
            raise CompressError(f"{path}: recipe file not found")
        text, name = p.read_text(), str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise CompressError(f"{name}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    if data is None:
        raise ConfigError("<top>", "a recipe mapping (model, data, baseline, steps)", "an empty file", file=name)
    return data, name


def load_recipe(path: str | None = None, *, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe (``None`` = the embedded default)."""
    data, name = read_recipe_data(path)
    if overrides:
        if not isinstance(data, dict):
            raise ConfigError("<top>", "a recipe mapping", f"<{type(data).__name__}>", file=name)
        data = apply_overrides(data, list(overrides))
    return parse_recipe(data, file=name)
