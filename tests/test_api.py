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


def _public_callables():
    """``(qualified name, function)`` of every public function and public method defined in ``compress``."""
    import dataclasses
    import importlib
    import inspect
    import pkgutil

    for info in pkgutil.walk_packages(compress.__path__, "compress."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj):
                yield f"{info.name}.{name}", obj
            elif inspect.isclass(obj):
                members = [(k, v) for k, v in vars(obj).items() if inspect.isfunction(v) and not k.startswith("_")]
                if not dataclasses.is_dataclass(obj) and "__init__" in vars(obj):
                    members.append(("__init__", obj.__init__))  # a dataclass' fields are its config, not options
                for k, v in members:
                    yield f"{info.name}.{name}.{k}", v


def test_no_public_function_takes_more_than_ten_parameters():
    """Options travel as config objects: a function's own parameters (``**shorthand`` aside) stay at most 10."""
    import inspect

    too_many = {}
    for name, fn in _public_callables():
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if len(params) > 10:
            too_many[name] = len(params)
    assert not too_many, too_many
    names = [n for n, _ in _public_callables()]
    assert "compress.transforms.reconstruct.layerwise.reconstruct" in names and len(names) > 100  # the walk sees them
