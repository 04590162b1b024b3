"""The public API resolves, and every shipped recipe validates (the recipes are the test matrix)."""
from pathlib import Path

import pytest

import compress
from compress.recipe.registry import list_steps
from compress.recipe.schema import load_recipe

RECIPES = sorted(Path(__file__).resolve().parents[1].joinpath("recipes").glob("*.yaml"))


@pytest.mark.parametrize("name", compress.__all__)
def test_public_name_resolves(name):
    assert callable(getattr(compress, name))


def test_unknown_public_name():
    with pytest.raises(AttributeError):
        compress.no_such_function  # noqa: B018


def test_every_step_is_registered():
    assert set(list_steps()) == {"analyze", "prune", "rewrite", "drop", "reconstruct", "plan", "calibrate", "finetune",
                                "report"}


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipe_validates(path):
    recipe = load_recipe(str(path))
    assert recipe.steps


def test_console_script_is_the_cli():
    import tomllib

    meta = tomllib.loads(Path(__file__).resolve().parents[1].joinpath("pyproject.toml").read_text())
    assert meta["project"]["scripts"]["compress"] == "compress.run:main"
