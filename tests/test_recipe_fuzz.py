"""Recipe parsing under random input: a bad recipe gives exactly one CompressError naming the file and field.

Any other exception escaping :func:`load_recipe` / :func:`parse_recipe` is a bug (the CLI would print a
traceback); a recipe that parses must survive the round trip through ``recipe_to_data`` (what ``OUT/recipe.yaml``
holds) unchanged.
"""
from __future__ import annotations

import copy
import dataclasses
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compress.errors import CompressError, ConfigError
from compress.recipe.registry import get_step, list_steps
from compress.recipe.schema import load_recipe, parse_recipe, recipe_to_data

BASE = {
    "seed": 0,
    "out": "runs/fuzz",
    "model": {"name": "compress:small_resnet", "kwargs": {"num_classes": 4, "widths": [8, 16]}, "in_channels": 3},
    "data": {"source": "synthetic", "image_size": 12, "num_classes": 4, "synthetic_size": 64, "batch_size": 16},
    "baseline": {"train": {"epochs": 1, "lr": 0.05}},
    "steps": [{"analyze": {"max_batches": 2}}, {"prune": {"ratio": 0.25}}, "calibrate",
              {"finetune": {"epochs": 1, "distill": {"alpha": 0.5}}}, {"rewrite": {"kind": "grouped", "groups": 2}},
              {"plan": {"target": {"macs": 0.5}}}, {"report": {"batch_sizes": [1]}}],
}
STEPS = list_steps()
# Every option name of every step, plus words the schema gives meaning to: mutations then reach validate().
OPTION_NAMES = sorted({f.name for s in STEPS for f in dataclasses.fields(get_step(s).config)})
WORDS = sorted(set(OPTION_NAMES + STEPS + ["auto", "cpu", "cuda", "cuda:0", "separable", "synthetic", "imagefolder",
                                           "l2", "macs", "latency", "float32", "compress:small_resnet", "a:b"]))

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-3, 3), st.floats(), st.floats(-2, 2),
                    TEXT, st.sampled_from(WORDS))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(TEXT, st.sampled_from(WORDS), st.integers()), inner,
                                                 max_size=3)), max_leaves=8)
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _paths(node, prefix=()):
    """Every location in a nested dict/list, root included."""
    out = [prefix]
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        out += _paths(value, prefix + (key,))
    return out


@st.composite
def mutated_recipes(draw) -> dict:
    """BASE with 1-3 random edits: set a value, delete a key, add a key, append a step with random options."""
    recipe = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["set", "delete", "add", "step"]))
        if action == "step":
            options = draw(st.dictionaries(st.sampled_from(OPTION_NAMES), VALUES, max_size=3))
            recipe.setdefault("steps", [])
            if isinstance(recipe["steps"], list):
                recipe["steps"].append({draw(st.sampled_from(STEPS)): options})
            continue
        path = draw(st.sampled_from(_paths(recipe)[1:]))
        parent = recipe
        for key in path[:-1]:
            parent = parent[key]
        if action == "set":
            parent[path[-1]] = draw(VALUES)
        elif action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent[path[-1]], dict):
            parent[path[-1]][draw(st.one_of(TEXT, st.sampled_from(WORDS)))] = draw(VALUES)
    return recipe


@pytest.fixture(scope="module")
def recipe_file():
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp) / "fuzz.yaml"


def _assert_one_clear_error(err: CompressError, *files: str) -> None:
    message = str(err)
    assert "\n" not in message, message
    assert any(message.startswith(f"{f}: ") for f in files), message
    if isinstance(err, ConfigError):
        assert err.field and f"{err.field}: expected " in message, message


def _assert_round_trip(recipe) -> None:
    assert parse_recipe(recipe_to_data(recipe), file="again.yaml") == recipe


@FUZZ
@given(data=mutated_recipes())
def test_mutated_recipe_parses_or_names_file_and_field(recipe_file, data):
    recipe_file.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    try:
        recipe = load_recipe(str(recipe_file))
    except CompressError as err:
        _assert_one_clear_error(err, str(recipe_file))
    else:
        _assert_round_trip(recipe)


@FUZZ
@given(data=VALUES)
def test_any_structure_parses_or_names_file_and_field(data):
    try:
        recipe = parse_recipe(data, file="r.yaml")
    except CompressError as err:
        _assert_one_clear_error(err, "r.yaml")
    else:
        _assert_round_trip(recipe)


OVERRIDE_PATHS = st.lists(st.one_of(st.sampled_from(WORDS + ["model", "data", "baseline", "train", "kwargs"]),
                                    st.integers(0, 8).map(str), TEXT), min_size=1, max_size=4).map(".".join)
OVERRIDE_VALUES = st.one_of(VALUES.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()), TEXT)


@FUZZ
@given(overrides=st.lists(st.tuples(OVERRIDE_PATHS, OVERRIDE_VALUES).map("=".join), min_size=1, max_size=3))
def test_random_overrides_apply_or_name_the_field(recipe_file, overrides):
    recipe_file.write_text(yaml.safe_dump(BASE), encoding="utf-8")
    try:
        recipe = load_recipe(str(recipe_file), overrides=overrides)
    except CompressError as err:
        _assert_one_clear_error(err, str(recipe_file), "--set")
    else:
        _assert_round_trip(recipe)


def test_base_recipe_is_valid(recipe_file):
    """The fuzzing starts from a recipe that parses, so every error comes from a mutation."""
    recipe_file.write_text(yaml.safe_dump(BASE), encoding="utf-8")
    assert [s.name for s in load_recipe(str(recipe_file)).steps] == [next(iter(s)) if isinstance(s, dict) else s
                                                                     for s in BASE["steps"]]
