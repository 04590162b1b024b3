"""A user's data factory: ``data: {source: mypkg.data:make, kwargs: {...}}`` in a recipe, through the CLI."""
from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
import yaml

from compress.data import DataConfig, build_data
from compress.errors import CompressError
from compress.run import main

FACTORY = textwrap.dedent('''
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    def _images(n, seed, classes=3):
        g = torch.Generator().manual_seed(seed)
        labels = torch.arange(n) % classes
        return TensorDataset(torch.randn(n, 3, 12, 12, generator=g) + labels.view(-1, 1, 1, 1).float(), labels)

    def datasets(n=60, classes=3):
        return {"train": _images(n, 0, classes), "test": _images(n // 2, 1, classes), "num_classes": classes}

    def loaders(n=60):
        return {"train": DataLoader(_images(n, 0), batch_size=8, shuffle=True),
                "val": DataLoader(_images(12, 2), batch_size=6), "test": _images(20, 1)}

    def wrong():
        return [1, 2]
''')


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "userdata.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "userdata"
    sys.modules.pop("userdata", None)


def test_datasets_are_split_stratified_like_a_builtin_source(factory_module):
    data = build_data(DataConfig(source=f"{factory_module}:datasets", kwargs={"n": 90}, val_size=15, calib_size=9,
                                 batch_size=8), seed=0)
    assert data.num_classes == 3 and data.input_shape == (3, 12, 12)
    assert data.sizes == {"train": 75, "val": 15, "test": 45, "calib": 9}
    assert data.describe()["splits"]["class_counts"]["val"] == [5, 5, 5]


def test_loaders_are_used_as_given_and_calib_is_drawn_from_train(factory_module):
    data = build_data(DataConfig(source=f"{factory_module}:loaders", calib_size=6, batch_size=4), seed=0)
    assert data.val.batch_size == 6 and data.sizes["val"] == 12 and data.num_classes == 3
    assert data.sizes["calib"] == 6 and data.describe()["splits"]["class_counts"]["calib"] == [2, 2, 2]


@pytest.mark.parametrize("source, kwargs, message", [
    ("nosuchpkg.data:make", {}, "cannot import the data factory 'nosuchpkg.data:make'"),
    ("userdata:wrong", {}, "returned list; expected a mapping with the keys train and test"),
    ("userdata:datasets", {"bogus": 1}, r"data.kwargs: userdata:datasets rejected the arguments"),
])
def test_factory_mistakes_are_one_clear_error(factory_module, source, kwargs, message):
    with pytest.raises(CompressError, match=message):
        build_data(DataConfig(source=source, kwargs=kwargs))


def test_kwargs_without_a_factory_are_refused():
    from compress.errors import ConfigError

    with pytest.raises(ConfigError, match="kwargs"):
        DataConfig(source="synthetic", kwargs={"n": 3}).validate()


def test_recipe_with_a_factory_runs_and_reports(factory_module, tmp_path, isolated_cache):
    recipe = {"seed": 0, "data": {"source": f"{factory_module}:datasets", "kwargs": {"n": 48}, "val_size": 6,
                                  "calib_size": 12, "batch_size": 8},
              "model": {"name": "compress:small_resnet",
                        "kwargs": {"num_classes": 3, "in_channels": 3, "widths": [8, 16], "blocks": [1, 1]}},
              "baseline": {"train": {"epochs": 1}},
              "steps": [{"calibrate": {"max_batches": 1}}, {"report": {"latency": False}}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main([str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["data"]["source"] == "userdata:datasets" and run["data"]["sizes"]["train"] == 42
    assert (tmp_path / "out" / "report.json").is_file()
