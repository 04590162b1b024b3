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


@pytest.mark.filterwarnings("ignore:save. no model spec given")  # an in-memory model is pickled, by design
def test_run_recipe_in_memory_model_and_data_keeps_the_report(tmp_path):
    """A user who leaves the CLI: their own trained model and datasets, the report written, their model intact."""
    import copy
    import json

    import torch
    import yaml
    from torch.utils.data import TensorDataset

    from compress.models import small_resnet

    torch.manual_seed(0)
    labels = torch.arange(96) % 3
    images = torch.randn(96, 1, 12, 12) + labels.view(-1, 1, 1, 1).float()
    mine = small_resnet(num_classes=3, in_channels=1, widths=(8, 16), blocks=(1, 1)).eval()
    untouched = copy.deepcopy(mine.state_dict())
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"seed": 0, "data": {"val_size": 12, "calib_size": 24, "batch_size": 16},
                                      "steps": [{"prune": {"ratio": 0.25}}, {"calibrate": {"max_batches": 2}},
                                                {"report": {"latency": False}}]}))
    ctx = compress.run_recipe(recipe_path=str(recipe), out=str(tmp_path / "out"), verbose=False, model=mine,
                              data={"train": TensorDataset(images[:72], labels[:72]),
                                    "test": TensorDataset(images[72:], labels[72:])})
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["final"]["macs"] < report["baseline"]["macs"]
    assert ctx.baseline_origin["source"] == "in-memory" and ctx.data.sizes["test"] == 24
    assert all(torch.equal(v, untouched[k]) for k, v in mine.state_dict().items())
    assert all(p.requires_grad for p in mine.parameters())  # the caller's model is not frozen either
    assert ctx.model.layers[0][0].conv1.out_channels < mine.layers[0][0].conv1.out_channels
