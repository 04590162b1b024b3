"""What a run ships: the compressed model in formats that load without ``compress``, each checked after writing.

:func:`write_artifacts` writes into the run folder

* ``model.pt2``: a ``torch.export`` program with a dynamic batch (``torch.export.load(p).module()(x)``), checked
  against eager PyTorch at two batch sizes;
* ``model.onnx``: BatchNorms folded, dynamic batch, run by ONNX Runtime at two batch sizes
  (:mod:`compress.artifacts.onnx_file`);
* ``model.safetensors``: the state dict (``safetensors.torch.load_file``), read back and compared exactly;
* ``model.json``: the architecture (every layer's type, constructor arguments where known, parameter shapes; how
  to rebuild the original with ``compress``) and the input preprocessing (mean, std, size, channels).

Each artifact's record (file, check, measured error) goes into ``report.json`` (``artifacts``). An artifact that
cannot be written is a note saying why, never a crash: the run's ``model.pt`` is always there.
"""
from __future__ import annotations

import copy
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io import atomic_write_bytes, atomic_write_text
from .onnx_file import ONNX_FILE, write_onnx

__all__ = ["ARTIFACT_FILES", "write_artifacts", "architecture"]

LOG = logging.getLogger(__name__)

ARTIFACT_FILES = ("model.pt2", ONNX_FILE, "model.safetensors", "model.json")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def architecture(model: nn.Module) -> list[dict[str, Any]]:
    """One entry per module that owns parameters or buffers: ``name``, ``type``, ``args`` (constructor arguments
    for the module types compress can rebuild, else ``None``) and the shapes of its own tensors."""
    from ..serialization import _ARGS, _args, _name

    rows = []
    for name, module in model.named_modules():
        own = {k: list(v.shape) for k, v in [*module.named_parameters(recurse=False),
                                              *module.named_buffers(recurse=False)] if v is not None}
        if not own:
            continue
        kind = _name(type(module))
        args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in _args(module).items()} if kind in _ARGS else None
        rows.append({"name": name, "type": kind, "args": args, "tensors": own})
    return rows


def _pt2(model: nn.Module, x: torch.Tensor, out: Path) -> dict[str, Any]:
    from ..serialization import EXPORT_BATCHES, EXPORT_RTOL, export_program

    error = export_program(copy.deepcopy(model).to("cpu", torch.float32), x, out / "model.pt2")
    return {"file": "model.pt2", "load": "torch.export.load('model.pt2').module()(x)",
            "checked_batches": list(EXPORT_BATCHES), "max_rel_error": error, "tolerance": EXPORT_RTOL}


def _safetensors(model: nn.Module, out: Path) -> dict[str, Any]:
    from safetensors.torch import load_file, save_model

    path = out / "model.safetensors"
    # save_model writes its file itself (mode 0600, not atomic): write it aside, then atomically, readable like
    # every other output
    with tempfile.TemporaryDirectory(dir=out, prefix=".safetensors.") as tmp:
        aside = Path(tmp) / path.name
        save_model(model.to("cpu"), str(aside))  # shared tensors are stored once (save_model dedups them)
        atomic_write_bytes(path, aside.read_bytes())
    loaded = load_file(str(path))
    state = model.state_dict()
    mismatched = [k for k, v in loaded.items() if k not in state or not torch.equal(state[k].cpu(), v)]
    if mismatched:
        raise RuntimeError(f"read back differs for {mismatched[:3]}")
    return {"file": "model.safetensors", "load": "safetensors.torch.load_file('model.safetensors')",
            "tensors": len(loaded), "read_back_exact": True}


def write_artifacts(model: nn.Module, example_inputs: torch.Tensor, out_dir: str | Path, *,
                    preprocessing: dict[str, Any], spec: dict[str, Any] | None,
                    notes: list[str]) -> dict[str, Any]:
    """Write and check every artifact of ``model`` into ``out_dir``.

    Args:
        model: the compressed model (not modified: CPU float32 copies are exported).
        example_inputs: ``(1, C, H, W)``; sets the input shape and seeds the check batches.
        out_dir: the run folder.
        preprocessing: how inputs are prepared (see :func:`compress.data.sources.preprocessing`).
        spec: how to rebuild the original with ``compress`` (``None`` for an in-memory model).
        notes: why an artifact is missing is appended here.

    Returns:
        ``{file name: record}`` for the artifacts written.
    """
    out = Path(out_dir)
    twin = copy.deepcopy(model).eval().to("cpu", torch.float32)
    x = example_inputs[:1].detach().to("cpu", torch.float32)
    written: dict[str, Any] = {}
    for name, write in (("model.pt2", lambda: _pt2(twin, x, out)), ("model.safetensors", lambda: _safetensors(twin, out))):
        try:
            written[name] = write()
        except Exception as err:  # noqa: BLE001 - an artifact the exporter cannot take is a note, not a crash
            notes.append(f"{name} not written: {_first_line(err)}")
            LOG.warning("%s not written: %s", name, _first_line(err))
    onnx = write_onnx(twin, x, out, notes)
    if onnx is not None:
        written[ONNX_FILE] = onnx
    meta = {"format": "compress-artifacts/1", "input": {"name": "input", "shape": ["batch", *x.shape[1:]]},
            "preprocessing": preprocessing, "original": spec, "files": sorted(written),
            "layers": architecture(twin)}
    atomic_write_text(out / "model.json", json.dumps(meta, indent=1, default=str))
    written["model.json"] = {"file": "model.json", "layers": len(meta["layers"])}
    return written
