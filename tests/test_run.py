"""End to end: the tiny recipe through the CLI, output-directory safety, runner-level resume."""
import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from compress.run import main

TINY = str(Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml")


@pytest.fixture
def out(tmp_path, isolated_cache):
    return tmp_path / "run"


def _weights(path):
    import compress

    return compress.load(path).state_dict()


def test_tiny_recipe_end_to_end(out, capsys):
    assert main([TINY, "--out", str(out), "--quiet"]) == 0
    for name in ("report.json", "report.md", "model.pt", "baseline.pt", "recipe.yaml", "run.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["baseline"]["macs"] > report["final"]["macs"]  # pruning at ratio 0.25 removed work
    run = json.loads((out / "run.json").read_text())
    env = run["environment"]
    assert env["seed"] == 0 and env["threads"] >= 1 and env["versions"]["torch"] == torch.__version__
    assert [s["kind"] for s in run["steps"]] == ["baseline", "analyze", "prune", "calibrate", "finetune"]
    assert all("top1" in s["metrics"] for s in run["steps"])
    assert not (out / ".lock").exists()


def test_existing_output_needs_force(out, capsys):
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    assert main([TINY, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "exists and is not empty; pass --force" in err and "Traceback" not in err
    assert (out / "precious.txt").read_text() == "mine"


def test_force_replaces_an_earlier_run(out):
    assert main([TINY, "--out", str(out), "--quiet", "--set", "steps=[finetune]",
                 "--set", "baseline.train.epochs=1"]) == 0
    (out / "stale.txt").write_text("old")
    assert main([TINY, "--out", str(out), "--quiet", "--force", "--set", "steps=[calibrate]",
                 "--set", "baseline.train.epochs=1"]) == 0
    assert not (out / "stale.txt").exists()


def test_locked_output_is_refused(out, capsys):
    out.mkdir()
    (out / ".compress-run").write_text("x")
    (out / ".lock").write_text(str(os.getppid()))  # a live process holds it
    assert main([TINY, "--resume", str(out), "--quiet"]) == 2
    assert "another compress run" in capsys.readouterr().err


def test_resume_after_interrupt_matches_uninterrupted(out, tmp_path, monkeypatch):
    args = ["--quiet", "--set", "steps=[analyze, {prune: {ratio: 0.25}}, calibrate, {finetune: {epochs: 1}}]"]
    reference = tmp_path / "reference"
    assert main([TINY, "--out", str(reference), *args]) == 0

    from compress.recipe import registry

    spec = registry.get_step("finetune")
    calls = {"n": 0}

    def interrupted(ctx, cfg):
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setitem(registry._STEPS, "finetune", dataclasses.replace(spec, handler=interrupted))
    assert main([TINY, "--out", str(out), *args]) == 130
    assert calls["n"] == 1 and not (out / "model.pt").exists()
    monkeypatch.setitem(registry._STEPS, "finetune", spec)
    assert main([TINY, "--resume", str(out), *args]) == 0
    for (name, a), b in zip(_weights(reference / "model.pt").items(), _weights(out / "model.pt").values()):
        assert torch.equal(a, b), name
    # the typed records of the steps before the interruption come back from the saved state, not re-measured
    ref, resumed = (json.loads((d / "run.json").read_text())["steps"] for d in (reference, out))
    assert [s["kind"] for s in resumed] == [s["kind"] for s in ref] == ["baseline", "analyze", "prune", "calibrate",
                                                                          "finetune"]
    prune = [s["details"] for s in (ref[2], resumed[2])]
    for d in prune:  # measured anew on each run: wall time and memory
        for key in ("seconds", "peak_rss_bytes", "peak_increase_bytes"):
            d.pop(key)
    assert prune[0] == prune[1] and prune[1]["macs_after"] < prune[1]["macs_before"]


def test_step_returning_the_wrong_record_type_is_a_bug_not_a_user_error(out, monkeypatch):
    from compress.recipe import registry

    spec = registry.get_step("calibrate")
    monkeypatch.setitem(registry._STEPS, "calibrate", dataclasses.replace(spec, handler=lambda ctx, cfg: {}))
    with pytest.raises(TypeError, match="returned dict, not CalibrateDetails"):
        main([TINY, "--out", str(out), "--quiet", "--set", "steps=[calibrate]"])


def test_cli_shows_progress_lines_and_quiet_silences_them(capsys):
    import logging

    from compress.run import _console_logging

    log = logging.getLogger("compress.runner")
    with _console_logging(quiet=False):
        log.info("[1/2] prune")
        log.warning("cached baseline unreadable")
    captured = capsys.readouterr()
    assert captured.out == "[1/2] prune\n" and captured.err == "warning: cached baseline unreadable\n"
    with _console_logging(quiet=True):
        log.info("[2/2] report")
        log.warning("still said")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "warning: still said\n"
    assert not logging.getLogger("compress").handlers  # removed again after the run


def test_a_model_with_an_unprunable_group_finishes_and_the_report_names_the_group(out, tmp_path, monkeypatch):
    """The user's model (``module:factory``) has groups torch-pruning breaks (a split by stored sizes): the
    recipe finishes, the rest of the model prunes, and report.json / report.md name each skipped group's root
    with its reason."""
    import yaml

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent / "transforms" / "prune"))
    recipe = yaml.safe_load(Path(TINY).read_text())
    recipe["model"] = {"name": "unprunable_models:MixNet", "kwargs": {"num_classes": 4}}
    recipe["baseline"] = {"train": {"epochs": 1, "lr": 0.05}}
    recipe["steps"] = [{"prune": {"ratio": 0.3}}, {"report": {"latency": False}}]
    path = tmp_path / "unprunable.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main([str(path), "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["final"]["macs"] < report["baseline"]["macs"]
    skipped = [n for n in report["notes"] if "left unpruned" in n]
    assert sorted(n.split("'")[1] for n in skipped) == ["mix.convs.0", "mix.convs.1"]
    assert all(n.startswith("step prune") and "split_with_sizes" in n for n in skipped)
    markdown = (out / "report.md").read_text()
    assert all(n in markdown for n in skipped)
    run = json.loads((out / "run.json").read_text())
    (prune,) = [s for s in run["steps"] if s["kind"] == "prune"]
    assert sorted(s["root"] for s in prune["details"]["skipped"]) == ["mix.convs.0", "mix.convs.1"]
