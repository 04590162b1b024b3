"""Recipe validation: each kind of mistake gives one message naming file, field and what was expected."""
from pathlib import Path

import pytest
import yaml

from compress.errors import CompressError, ConfigError
from compress.recipe.schema import apply_overrides, load_recipe, parse_recipe

GOOD = {
    "model": {"name": "compress:small_resnet", "kwargs": {"num_classes": 10}},
    "data": {"source": "synthetic", "synthetic_size": 64},
    "baseline": {"train": {"epochs": 1}},
    "steps": [{"finetune": {"epochs": 0.5}}, "report"],
}


def _write(tmp_path, data, name="r.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(path)


def test_good_recipe_parses(tmp_path):
    recipe = load_recipe(_write(tmp_path, GOOD))
    assert [s.name for s in recipe.steps] == ["finetune", "report"]
    assert recipe.data.synthetic_size == 64 and recipe.model.kwargs == {"num_classes": 10}


def test_default_recipe_parses():
    recipe = load_recipe(None)
    assert recipe.data.source == "fashion-mnist"
    assert [s.name for s in recipe.steps][-1] == "report"


@pytest.mark.parametrize("mutate, field, expected", [
    (lambda r: r["data"].update(sourse="x"), "data.sourse", "one of the keys"),
    (lambda r: r["data"].update(batch_size="big"), "data.batch_size", "an integer"),
    (lambda r: r["data"].update(batch_size=0), "data.batch_size", "an integer >= 1"),
    (lambda r: r["data"].update(source="mnist"), "data.source", "one of 'fashion-mnist'"),
    (lambda r: r.update(steps=[]), "steps", "a non-empty list"),
    (lambda r: r.update(steps=[{"prunee": {}}]), "steps[0]", "a step name among"),
    (lambda r: r.update(steps=[{"finetune": {"epochs": -1}}]), "steps[0].finetune.epochs", "a number >= 0"),
    (lambda r: r.update(steps=[{"finetune": {"lr": "fast"}}]), "steps[0].finetune.lr", "a number"),
    (lambda r: r["model"].update(name="resnet18"), "model.name", "'torchvision:NAME'"),
    (lambda r: r.update(seed=1.5), "seed", "an integer"),
    (lambda r: r.update(device="tpu"), "device", "auto, cpu, cuda"),
    (lambda r: r["baseline"].update(cache="yes"), "baseline.cache", "true or false"),
])
def test_mistakes_name_file_and_field(tmp_path, mutate, field, expected):
    import copy

    data = copy.deepcopy(GOOD)
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    err = info.value
    assert err.field == field
    assert str(err).startswith(f"{path}: {field}: expected ")
    assert expected in str(err)


def test_invalid_yaml_gives_line(tmp_path):
    path = _write(tmp_path, "model: {name: [unclosed\n")
    with pytest.raises(CompressError, match=r"not valid YAML at line \d+"):
        load_recipe(path)


def test_missing_file():
    with pytest.raises(CompressError, match="recipe file not found"):
        load_recipe("/nonexistent/recipe.yaml")


def test_top_level_not_mapping(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_recipe(_write(tmp_path, "- a\n- b\n"))


def test_overrides_apply_to_nested_and_step_fields(tmp_path):
    recipe = load_recipe(_write(tmp_path, GOOD), overrides=["data.batch_size=8", "steps.0.finetune.lr=0.5",
                                                            "model.kwargs.num_classes=10"])
    assert recipe.data.batch_size == 8
    assert recipe.steps[0].config.lr == 0.5


def test_override_errors_are_clear():
    with pytest.raises(ConfigError, match="PATH=VALUE"):
        apply_overrides(GOOD, ["data.batch_size"])
    with pytest.raises(ConfigError, match="a list index below 2"):
        apply_overrides(GOOD, ["steps.5.finetune.lr=1"])


def test_parse_recipe_accepts_bare_step_names():
    recipe = parse_recipe({**GOOD, "steps": ["calibrate", "report"]}, file="x.yaml")
    assert [s.name for s in recipe.steps] == ["calibrate", "report"]


@pytest.mark.parametrize("override, field", [
    ("data.sourse=x", "data.sourse"),                 # an unknown key the override added
    ("data.batch_size=0", "data.batch_size"),         # a bad value at the overridden path
    ("steps.0.analyze.max_batches=-1", "steps[0].analyze.max_batches"),
    ("steps.1.prunee.ratio=0.3", "steps[1]"),         # the recipe alone is valid: the override broke it
])
def test_override_mistakes_are_blamed_on_set_not_the_file(override, field):
    with pytest.raises(ConfigError) as info:
        load_recipe(str(Path(__file__).parents[2] / "recipes" / "tiny.yaml"), overrides=[override])
    assert str(info.value).startswith(f"--set: {field}: expected ")
    assert "tiny.yaml" not in str(info.value)


def test_a_broken_recipe_is_still_blamed_on_its_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"data": {"batch_size": 0}, "steps": ["analyze"]}))
    with pytest.raises(ConfigError, match=r"r\.yaml: data\.batch_size: expected"):
        load_recipe(str(path), overrides=["seed=3"])
