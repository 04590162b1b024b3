"""The run's deploy artifacts load without ``compress``: a subprocess where ``import compress`` fails loads
``model.pt2`` (torch only), ``model.onnx`` (onnxruntime only) and ``model.safetensors`` (safetensors only) and
reproduces the eager model's logits; ``model.json`` carries the architecture and the preprocessing."""
from __future__ import annotations

import json
import stat
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from compress.artifacts import architecture, write_artifacts
from compress.models import small_resnet
from compress.run import main

LOADER = textwrap.dedent('''
    import sys
    sys.modules["compress"] = None  # compress must not be needed
    try:
        import compress  # noqa: F401
        raise SystemExit("compress was importable")
    except ImportError:
        pass
    import json
    import numpy as np, onnxruntime as ort, torch
    from safetensors.torch import load_file

    out = sys.argv[1]
    x = torch.load(f"{out}/x.pt")
    want = torch.load(f"{out}/want.pt")
    program = torch.export.load(f"{out}/model.pt2").module()
    session = ort.InferenceSession(f"{out}/model.onnx", providers=["CPUExecutionProvider"])
    results = {"pt2": program(x), "onnx": torch.from_numpy(session.run(None, {"input": x.numpy()})[0])}
    errors = {k: float((v - want).abs().max() / want.abs().max()) for k, v in results.items()}
    state = load_file(f"{out}/model.safetensors")
    meta = json.load(open(f"{out}/model.json"))
    print(json.dumps({"errors": errors, "tensors": len(state), "preprocessing": meta["preprocessing"]}))
''')


def _load_without_compress(out, x, want) -> dict:
    torch.save(x, out / "x.pt")
    torch.save(want, out / "want.pt")
    result = subprocess.run([sys.executable, "-c", LOADER, str(out)], capture_output=True, text=True, timeout=300,
                            cwd=out)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_artifacts_load_without_compress_and_match(tmp_path):
    torch.manual_seed(0)
    model = small_resnet(num_classes=4, in_channels=3, widths=(8, 16), blocks=(1, 1)).eval()
    x = torch.randn(1, 3, 16, 16)
    notes: list[str] = []
    written = write_artifacts(model, x, tmp_path, preprocessing={"mean": [0.5], "std": [0.25]}, spec=None,
                              notes=notes)
    assert set(written) == {"model.pt2", "model.onnx", "model.safetensors", "model.json"} and not notes
    assert written["model.pt2"]["max_rel_error"] < 1e-4 and written["model.safetensors"]["read_back_exact"]
    batch = torch.randn(5, 3, 16, 16)  # a batch size no export was traced at
    with torch.no_grad():
        want = model(batch)
    loaded = _load_without_compress(tmp_path, batch, want)
    assert loaded["errors"]["pt2"] < 1e-5 and loaded["errors"]["onnx"] < 1e-4
    assert loaded["tensors"] == len(model.state_dict()) and loaded["preprocessing"]["std"] == [0.25]
    # every file is readable by the team like any other output (safetensors writes 0600 by itself), no leftovers
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert {name: mode for name, mode in modes.items() if mode != modes["plain.txt"]} == {}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_architecture_lists_layers_with_shapes():
    model = small_resnet(num_classes=4, in_channels=1, widths=(8, 16), blocks=(1, 1))
    rows = {r["name"]: r for r in architecture(model)}
    stem = next(r for r in rows.values() if r["type"].endswith("Conv2d"))
    assert stem["args"]["in_channels"] == 1 and stem["tensors"]["weight"][1] == 1


def test_a_run_ends_with_its_artifacts_and_preprocessing(tmp_path, isolated_cache, capsys):
    recipe = {"seed": 0, "model": {"name": "compress:small_resnet",
                                   "kwargs": {"num_classes": 4, "in_channels": 3, "widths": [8, 16], "blocks": [1, 1]}},
              "data": {"source": "synthetic", "image_size": 12, "num_classes": 4, "synthetic_size": 64,
                       "val_size": 0, "calib_size": 32, "batch_size": 16},
              "baseline": {"train": {"epochs": 1}}, "steps": [{"prune": {"ratio": 0.25}}]}  # no report step
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main([str(path), "--out", str(tmp_path / "out")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    out = tmp_path / "out"
    for name in ("model.pt", "model.pt2", "model.onnx", "model.safetensors", "model.json"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "model.json").read_text())
    assert meta["preprocessing"]["input_shape"] == [3, 12, 12] and meta["original"]["name"] == "compress:small_resnet"
    assert last.startswith("done: no report step; models: model.pt, model.pt2, model.onnx"), last
