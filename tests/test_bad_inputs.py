"""Bad input and faults: one clear message and exit status 2 (130 when interrupted), nothing lost or left behind.

The table at the top runs each mistake through the CLI entry point in-process (``compress.run.main``): an
exception other than :class:`CompressError` would escape ``main`` and fail the test, so a passing case printed
one ``error:`` line and no traceback. One subprocess case checks the real ``python -m compress.run``.
"""
from __future__ import annotations

import ast
import copy
import gzip
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml
from torch import nn

from compress.errors import CompressError
from compress.outdir import LOCK, MARKER, OutDirLock
from compress.recipe.schema import load_recipe
from compress.run import main

ROOT = Path(__file__).resolve().parents[1]
MODEL = {"name": "compress:small_resnet", "kwargs": {"num_classes": 4, "in_channels": 3, "widths": [8, 16],
                                                      "blocks": [1, 1]}}
DATA = {"source": "synthetic", "image_size": 12, "num_classes": 4, "synthetic_size": 64, "val_size": 0,
        "calib_size": 32, "batch_size": 16}
CALIBRATE = [{"calibrate": {"max_batches": 1}}]


def _recipe_data(checkpoint: Path | None, steps: list | None = None) -> dict:
    model = copy.deepcopy(MODEL) | ({"checkpoint": str(checkpoint)} if checkpoint else {})
    return {"seed": 0, "model": model, "data": dict(DATA), "baseline": {"train": {"epochs": 1}},
            "steps": copy.deepcopy(steps or CALIBRATE)}


def _write(tmp: Path, data: dict, name: str = "recipe.yaml") -> str:
    path = tmp / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def _small_resnet(**kwargs) -> nn.Module:
    from compress.models import build_model

    return build_model({**MODEL, "kwargs": {**MODEL["kwargs"], **kwargs}})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """Weights (random, seeded) that fit MODEL: runs load them instead of training a baseline."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("user") / "weights.pt"
    torch.save(_small_resnet().state_dict(), path)
    return path


def _imagefolder(root: Path, classes: int, per_class: int = 2, size: tuple[int, int] = (14, 10)) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("RGB", size, color=(40 * c, 30 * i, 200)).save(folder / f"{i}.png")
    return root


def _idx(path: Path, array: torch.Tensor) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.to(torch.uint8).numpy().tobytes())


def _fashion_mnist_with_label(root: Path, label: int) -> Path:
    """The four Fashion-MNIST IDX files, 20 images each, one training label set to ``label``."""
    root.mkdir(parents=True, exist_ok=True)
    labels = torch.arange(20) % 10
    labels[3] = label
    for split, name in (("train", "train"), ("test", "t10k")):
        _idx(root / f"{name}-images-idx3-ubyte.gz", torch.randint(0, 256, (20, 28, 28)))
        _idx(root / f"{name}-labels-idx1-ubyte.gz", labels if split == "train" else torch.arange(20) % 10)
    return root


# ------------------------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Case:
    """One mistake: ``build(tmp, checkpoint)`` writes the inputs and returns the CLI arguments."""

    id: str
    build: Callable[[Path, Path], list[str]]
    fragment: str
    code: int = 2
    leaves_run: bool = False  # the error comes from a step: the resumable run directory stays


def _edit(edit: Callable[[dict], object], steps: list | None = None, *, checkpoint: bool = True):
    def build(tmp: Path, ckpt: Path) -> list[str]:
        data = _recipe_data(ckpt if checkpoint else None, steps)
        edit(data)
        return [_write(tmp, data)]
    return build


def _steps(steps: list):
    return _edit(lambda r: None, steps)


def _text(text: str | bytes):
    def build(tmp: Path, ckpt: Path) -> list[str]:
        path = tmp / "recipe.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return [str(path)]
    return build


def _checkpoint(make: Callable[[Path, Path], None], steps: list | None = None):
    """A recipe whose model.checkpoint is a file ``make(path, good_checkpoint)`` writes."""
    def build(tmp: Path, ckpt: Path) -> list[str]:
        path = tmp / "user.pt"
        make(path, ckpt)
        return [_write(tmp, _recipe_data(path, steps))]
    return build


def _nan_weights(path: Path, good: Path) -> None:
    state = torch.load(good, weights_only=True)
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, path)


def _huge_weights(path: Path, good: Path) -> None:
    # finite weights whose activations overflow float32 one convolution later (1e25 * 1e25 > 3.4e38)
    torch.save({k: v * 1e25 if k in ("conv1.weight", "layers.0.0.conv1.weight") else v
                for k, v in torch.load(good, weights_only=True).items()}, path)


def _imagefolder_recipe(classes: int, num_classes: int, *, empty: bool = False, missing: bool = False):
    def build(tmp: Path, ckpt: Path) -> list[str]:
        root = tmp / "images"
        if empty:
            for split in ("train", "val"):
                (root / split / "cat").mkdir(parents=True)
        elif not missing:
            _imagefolder(root, classes)
        data = _recipe_data(None)
        data["model"]["kwargs"]["num_classes"] = num_classes
        data["data"] = {"source": "imagefolder", "root": str(root), "resize": 12, "val_size": 0, "batch_size": 4}
        return [_write(tmp, data)]
    return build


def _fashion_labels(tmp: Path, ckpt: Path) -> list[str]:
    data = _recipe_data(None)
    data["data"] = {"source": "fashion-mnist", "root": str(_fashion_mnist_with_label(tmp / "fm", 12)),
                    "val_size": 0, "batch_size": 8}
    return [_write(tmp, data)]


CASES = [
    # recipe: validated before the output directory exists
    Case("ratio-above-1", _steps([{"prune": {"ratio": 1.5}}]),
         "recipe.yaml: steps[0].prune.ratio: expected a channel ratio in (0, 1) or null, got 1.5"),
    Case("groups-0", _steps([{"rewrite": {"kind": "grouped", "groups": 0}}]),
         "recipe.yaml: steps[0].rewrite.groups: expected an integer >= 1 or 'auto', got 0"),
    Case("negative-baseline-epochs", _edit(lambda r: r["baseline"]["train"].update(epochs=-1)),
         "recipe.yaml: baseline.train.epochs: expected a number >= 0, got -1.0"),
    Case("unknown-step-option", _steps([{"calibrate": {"max_batch": 1}}]),
         "recipe.yaml: steps[0].calibrate.max_batch: expected one of the keys max_batches"),
    Case("missing-steps", _edit(lambda r: r.pop("steps")), "recipe.yaml: steps: expected a non-empty list"),
    Case("number-beyond-float", _steps([{"finetune": {"lr": 10**400}}]),
         "recipe.yaml: steps[0].finetune.lr: expected a finite number, got <a huge integer>"),
    Case("duplicate-key", _text("data: {source: synthetic, batch_size: 8, batch_size: 16}\nsteps: [calibrate]\n"),
         "not valid YAML at line 1, column 42: duplicate key 'batch_size'"),
    Case("not-utf8", _text(b"steps: [\xff\xfe]\n"), "recipe.yaml: not a UTF-8 text file (byte 8)"),
    Case("set-into-a-number", lambda tmp, ckpt: [_write(tmp, _recipe_data(ckpt)), "--set", "seed.value=1"],
         "--set: seed: expected a mapping or list to set a field in, got 0"),
    Case("device-cuda-x", _edit(lambda r: r.update(device="cuda:x")),
         "recipe.yaml: device: expected auto, cpu, cuda or cuda:N, got 'cuda:x'"),
    Case("threads-absurd", _edit(lambda r: r.update(threads=10**6)),
         "recipe.yaml: threads: expected an integer in 1..1024 or null"),
    Case("synthetic-absurd", _edit(lambda r: r["data"].update(synthetic_size=10**9)),
         "recipe.yaml: data.synthetic_size: expected at most 8 GiB of float32 images"),
    Case("empty-checkpoint-path", _edit(lambda r: r["model"].update(checkpoint="")),
         "recipe.yaml: model.checkpoint: expected a file path or null, got ''"),
    # model and checkpoint: checked before the baseline is recorded; the new directory is removed again
    Case("checkpoint-other-class-count", _checkpoint(lambda p, g: torch.save(_small_resnet(num_classes=10)
                                                                             .state_dict(), p)),
         "fc.weight: checkpoint (10, 16) vs model (4, 16)"),
    Case("checkpoint-other-architecture", _checkpoint(lambda p, g: torch.save(nn.Sequential(nn.Conv2d(3, 8, 3))
                                                                              .state_dict(), p)),
         "does not fit the model (another architecture or class count?)\n  missing keys: bn1.bias"),
    Case("checkpoint-truncated", _checkpoint(lambda p, g: p.write_bytes(g.read_bytes()[:300])),
         "user.pt: not a readable PyTorch checkpoint (truncated or corrupted?"),
    Case("checkpoint-not-weights", _checkpoint(lambda p, g: torch.save({"epoch": 3, "lr": 0.1}, p)),
         "user.pt: expected a state_dict (name -> tensor) or a whole nn.Module, got a mapping whose entry 'epoch'"),
    Case("checkpoint-nan", _checkpoint(_nan_weights),
         "user.pt: non-finite (NaN/Inf) values in conv1.weight (1 of 216 values)"),
    Case("checkpoint-missing", _edit(lambda r: r["model"].update(checkpoint="/nonexistent/w.pt")),
         "model.checkpoint: /nonexistent/w.pt: no such file"),
    # data
    Case("one-channel-data-three-channel-model", _edit(lambda r: r["data"].update(channels=1)),
         "the model cannot take the data's input shape (1, 12, 12)"),
    Case("imagefolder-5-classes-head-3", _imagefolder_recipe(5, 3),
         "the model outputs (3,) per image but the data has 5 classes; set model.kwargs.num_classes: 5"),
    Case("imagefolder-missing", _imagefolder_recipe(2, 2, missing=True),
         "expected sub-directories train/ and val/ (or test/)"),
    Case("imagefolder-empty", _imagefolder_recipe(1, 2, empty=True), "Found no valid file for the classes cat"),
    Case("labels-outside-classes", _fashion_labels,
         "data: the train split of fashion-mnist has label 12 (1 images) outside 0..9"),
    # faults inside steps: the message names the step; the resumable run directory stays
    Case("inf-activations-in-analysis", _checkpoint(_huge_weights, [{"analyze": {"max_batches": 1}}]),
         "steps[0] analyze: analysis: layer layers.0.0.conv1 produced non-finite (NaN/Inf) activations", 2, True),
    Case("finetune-diverges", _steps([{"finetune": {"steps": 6, "lr": 1.0e30, "distill": None}}]),
         "steps[0] finetune: training diverged", 2, True),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_clear_error(case, tmp_path, checkpoint, isolated_cache, capsys):
    argv = case.build(tmp_path, checkpoint)
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out), "--quiet"]) == case.code
    err = capsys.readouterr().err
    message = err.split("\r")[-1]  # after the evaluate progress bars (context.measure ignores --quiet)
    assert message.startswith("error: ") and case.fragment in message
    assert err.count("error: ") == 1 and "Traceback" not in err
    if case.leaves_run:
        assert (out / "state" / "progress.json").is_file() and not (out / "model.pt").exists()
    else:
        assert not out.exists()  # nothing half-made left behind


def test_cli_subprocess_prints_only_the_message(tmp_path, checkpoint):
    recipe = _write(tmp_path, _recipe_data(checkpoint, [{"prune": {"ratio": 1.5}}]))
    proc = subprocess.run([sys.executable, "-m", "compress.run", recipe, "--out", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == (f"error: {recipe}: steps[0].prune.ratio: expected a channel ratio in (0, 1) or null, "
                           "got 1.5\n")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- data and models
def test_calibration_split_smaller_than_one_batch(tmp_path, checkpoint, isolated_cache):
    data = _recipe_data(checkpoint, [{"analyze": {"max_batches": 4}},
                                     {"prune": {"ratio": 0.25, "importance": "activation"}}, "calibrate"])
    data["data"].update(calib_size=5, batch_size=16)
    out = tmp_path / "out"
    assert main([_write(tmp_path, data), "--out", str(out), "--quiet"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["data"]["sizes"]["calib"] == 5
    assert [s["kind"] for s in run["steps"]] == ["baseline", "analyze", "prune", "calibrate"]


def test_fit_rejects_labels_outside_the_head():
    from torch.utils.data import DataLoader, TensorDataset

    from compress.training import TrainConfig, fit

    model = _small_resnet()
    before = {k: v.clone() for k, v in model.named_parameters()}
    labels = torch.tensor([0, 1, 2, 3, 6, 1, 2, 3])  # the model has 4 outputs
    loader = DataLoader(TensorDataset(torch.randn(8, 3, 12, 12), labels), batch_size=8)
    with pytest.raises(CompressError, match=r"1 labels at step 1 are outside the model's 4 outputs 0\.\.3 "
                                            r"\(e\.g\. 6\)"):
        fit(model, loader, config=TrainConfig(steps=2), device="cpu", verbose=False)
    for name, value in model.named_parameters():
        assert torch.equal(value, before[name]), name  # rejected before any optimizer step


def test_analysis_names_a_nan_buffer_and_inf_activations():
    from compress import analyze

    batches = [torch.randn(4, 3, 12, 12)]
    model = _small_resnet()
    model.layers[1][0].bn1.running_var[2] = float("nan")
    with pytest.raises(CompressError, match=r"analysis: layers\.1\.0\.bn1\.running_var holds 1 non-finite"):
        analyze(model, batches, verbose=False)
    model = _small_resnet()
    with torch.no_grad():  # finite weights; 1e25 * 1e25 overflows float32 in the second conv's output
        model.conv1.weight.mul_(1e25)
        model.layers[0][0].conv1.weight.mul_(1e25)
    with pytest.raises(CompressError, match=r"analysis: layer layers\.0\.0\.conv1 produced non-finite "
                                            r"\(NaN/Inf\) activations on the calibration data \(measured at "
                                            r"layers\.0\.0\.relu"):
        analyze(model, batches, verbose=False)


def test_finetune_divergence_keeps_the_last_good_checkpoint(tmp_path, checkpoint, isolated_cache, capsys):
    steps = [{"finetune": {"steps": 20, "lr": 1.0e10, "checkpoint_every": 1, "distill": None}}]
    out = tmp_path / "out"
    assert main([_write(tmp_path, _recipe_data(checkpoint, steps)), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "steps[0] finetune: training diverged" in err and "holds non-finite values" in err
    saved = torch.load(out / "checkpoints" / "step0.pt", weights_only=True)
    assert f"(step {saved['position']['step']}) is the last good state, kept" in err
    assert saved["position"]["step"] < 20
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


USER_NETS = '''
import torch
import torch.nn.functional as F
from torch import nn


class MyConv(nn.Module):
    """A conv the transforms do not know: its own weight, applied with F.conv2d."""

    def __init__(self, cin, cout):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.1)
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, padding=1)


class Net(nn.Module):
    def __init__(self, num_classes=4, fixed_size=None):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.custom = MyConv(16, 16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fixed_size = fixed_size
        self.fc = nn.Linear(16 * (fixed_size or 1) ** 2, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.custom(x))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.flatten(1) if self.fixed_size else x.mean((2, 3)))


def net(num_classes=4, fixed_size=None):
    return Net(num_classes, fixed_size)
'''


@pytest.fixture
def user_nets(tmp_path, monkeypatch):
    """A user model package (module ``bad_inputs_nets``) with a custom conv-like layer, importable by name."""
    (tmp_path / "bad_inputs_nets.py").write_text(USER_NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("bad_inputs_nets", None)
    yield "bad_inputs_nets:net"
    sys.modules.pop("bad_inputs_nets", None)


def _custom_run(tmp_path, model_name):
    data = _recipe_data(None, [{"analyze": {"max_batches": 1}}, {"prune": {"ratio": 0.25}},
                               {"rewrite": {"kind": "separable", "min_channels": 4}}])
    data["model"] = {"name": model_name, "kwargs": {"num_classes": 4}}
    from compress.runner import run_recipe

    return run_recipe(recipe_path=_write(tmp_path, data), out=str(tmp_path / "out"), verbose=False)


def test_model_for_another_input_size(tmp_path, user_nets, isolated_cache, capsys):
    data = _recipe_data(None)
    data["model"] = {"name": user_nets, "kwargs": {"num_classes": 4, "fixed_size": 32}}
    assert main([_write(tmp_path, data), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "the model cannot take the data's input shape (3, 12, 12)" in capsys.readouterr().err


def test_custom_layer_is_left_untouched(tmp_path, user_nets, isolated_cache):
    ctx = _custom_run(tmp_path, user_nets)
    custom, original = ctx.model.custom, ctx.baseline.custom
    assert type(custom).__name__ == "MyConv"
    assert torch.equal(custom.weight, original.weight) and torch.equal(custom.bias, original.bias)
    assert [r.kind for r in ctx.records] == ["baseline", "analyze", "prune", "rewrite"]
    # the transforms did work on the layers they know
    prune, rewrite = ctx.records[2].details, ctx.records[3].details
    assert (prune.result.channels_before["conv2"], prune.result.channels_after["conv2"]) == (16, 12)
    assert rewrite.rewritten >= 1


def test_custom_layer_is_named_as_skipped(tmp_path, user_nets, isolated_cache):
    ctx = _custom_run(tmp_path, user_nets)
    for record in ctx.records[2:]:  # prune, rewrite
        assert "custom" in json.dumps(record.details.to_plain()), record.kind


def _grouped_3(tmp_path, checkpoint, layer="layers.0.0.conv1"):
    steps = [{"rewrite": {"kind": "grouped", "groups": 3, "min_channels": 4, "layers": [layer]}}]
    return [_write(tmp_path, _recipe_data(checkpoint, steps)), "--out", str(tmp_path / "out"), "--quiet"]


def test_groups_not_dividing_channels_is_reported_per_layer(tmp_path, checkpoint, isolated_cache, capsys):
    assert main(_grouped_3(tmp_path, checkpoint, layer="layers.0.0.conv[1]")) == 0  # a pattern: skip + reason
    assert "Traceback" not in capsys.readouterr().err
    (layer,) = json.loads((tmp_path / "out" / "run.json").read_text())["steps"][1]["details"]["layers"]
    assert layer["layer"] == "layers.0.0.conv1"
    assert layer["skipped"] == "grouped rewrite: groups=3 must divide in_channels=8 and out_channels=8"


def test_groups_not_dividing_a_named_layer_is_an_error(tmp_path, checkpoint, isolated_cache, capsys):
    assert main(_grouped_3(tmp_path, checkpoint)) == 2
    assert "steps[0] rewrite: " in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------ files
def _digest(paths) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_user_checkpoint_and_data_are_read_only(tmp_path, checkpoint, isolated_cache):
    root = _imagefolder(tmp_path / "images", 4, per_class=4)
    listing = sorted(root.rglob("*"))
    user_files = [checkpoint, *(p for p in listing if p.is_file())]
    before = _digest(user_files)
    data = _recipe_data(checkpoint, [{"analyze": {"max_batches": 2}}, {"prune": {"ratio": 0.25}}, "calibrate",
                                     {"finetune": {"steps": 2}}])
    data["data"] = {"source": "imagefolder", "root": str(root), "resize": 12, "val_size": 4, "batch_size": 8}
    recipe = _write(tmp_path, data)
    out = tmp_path / "out"
    assert main([recipe, "--out", str(out), "--quiet"]) == 0
    assert _digest(user_files) == before
    assert sorted(root.rglob("*")) == listing  # nothing added under the data
    assert not any(p.name.endswith(".tmp") for p in out.rglob("*"))  # every atomic write completed
    assert load_recipe(str(out / "recipe.yaml")) == load_recipe(recipe)  # the saved recipe reruns as is


def test_force_refuses_to_delete_a_run_holding_the_checkpoint(tmp_path, isolated_cache, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text("x")
    weights = out / "weights.pt"
    torch.save(_small_resnet().state_dict(), weights)
    recipe = _write(tmp_path, _recipe_data(weights))
    assert main([recipe, "--out", str(out), "--quiet", "--force"]) == 2
    assert "holds" in capsys.readouterr().err and weights.is_file()


HOLD_LOCK = """
import sys, time
from pathlib import Path
from compress.outdir import OutDirLock
OutDirLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_second_run_is_refused_while_another_holds_the_directory(tmp_path, checkpoint, isolated_cache, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text("x")
    (out / "report.json").write_text("{}")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        recipe = _write(tmp_path, _recipe_data(checkpoint))
        for extra in (["--force"], ["--resume", str(out)]):
            assert main([recipe, "--out", str(out), "--quiet", *extra]) == 2
            err = capsys.readouterr().err
            assert f"another compress run (pid {holder.pid}) is using this output directory" in err
        assert (out / "report.json").read_text() == "{}" and (out / LOCK).read_text() == str(holder.pid)
    finally:
        holder.kill()
        holder.wait()
    lock = OutDirLock(out)
    lock.acquire()  # the holder died: its lock is stale and taken over
    assert (out / LOCK).read_text() == str(os.getpid())
    lock.release()


def test_sigterm_during_finetune_is_resumable(tmp_path, checkpoint, isolated_cache):
    data = _recipe_data(checkpoint, [{"finetune": {"steps": 400, "checkpoint_every": 5, "distill": None}}])
    data["data"].update(image_size=8, batch_size=8)
    data["threads"] = 1
    recipe, out = _write(tmp_path, data), tmp_path / "out"
    env = {**os.environ, "COMPRESS_CACHE": str(isolated_cache), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "compress.run", recipe, "--out", str(out), "--quiet"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint_file = out / "checkpoints" / "step0.pt"
    deadline = time.monotonic() + 120
    while not checkpoint_file.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"interrupted; continue with: python -m compress.run {recipe} --resume {out}" in err
    assert "Traceback" not in err
    stopped_at = torch.load(checkpoint_file, weights_only=True)["position"]["step"]
    assert 0 < stopped_at < 400
    assert main([recipe, "--resume", str(out), "--quiet"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["steps"][1]["details"]["resumed_from_step"] == stopped_at
    assert run["steps"][1]["details"]["steps"] == 400


# A write outside compress/io.py must go through it (temp file + rename). Writes into in-memory buffers, or
# into the open temp-file handle that compress.io.atomic_write passes to its callback, are fine.
_MEMORY_TARGETS = {"buf", "buffer", "handle"}


def _direct_writes(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        args = [a.id if isinstance(a, ast.Name) else None for a in node.args]
        modes = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        to_memory = bool(set(args) & _MEMORY_TARGETS)
        torch_save = name == "save" and isinstance(func, ast.Attribute) and ast.unparse(func.value) in (
            "torch", "torch.export")
        if (name in ("open", "fdopen") and any(set(m) & set("wax+") for m in modes)
                or name in ("write_text", "write_bytes")
                or (torch_save or name == "savefig") and not to_memory):
            found.append(f"{path.name}:{node.lineno} {ast.unparse(func)}()")
    return found


def test_every_package_write_is_atomic():
    package = ROOT / "compress"
    offenders = {str(p.relative_to(ROOT)): _direct_writes(p) for p in sorted(package.rglob("*.py"))
                 if p.name != "io.py"}
    offenders = {k: v for k, v in offenders.items() if v}
    assert offenders == {}
