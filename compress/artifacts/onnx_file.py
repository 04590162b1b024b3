"""``OUT/model.onnx``: the compressed model in deploy form, loadable by ONNX Runtime without ``compress``.

The file is the model with its BatchNorms folded into the convs (:func:`compress.transforms.fold_batchnorm`), in
eval mode, float32, exported by :func:`compress.serialization.onnx_bytes`: one input ``input`` of shape
``(batch, C, H, W)`` (the batch axis is dynamic), one output ``output`` ``(batch, classes)``. The written file
itself is then loaded by ONNX Runtime and run at :data:`CHECK_BATCHES`; its relative max error against the eager
model (float64, on the CPU) is what the report records.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io import atomic_write_bytes
from ..measurement.runtimes import runtime
from ..measurement.runtimes.registry import check_batch, max_relative_error, numpy_input, tolerance
from ..serialization import onnx_bytes
from ..transforms.blocks.fold_bn import fold_batchnorm

__all__ = ["ONNX_FILE", "CHECK_BATCHES", "write_onnx"]

LOG = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
CHECK_BATCHES = (1, 8)  # batch sizes the written file is run at (two: the batch axis is really dynamic)


def _folded(model: nn.Module, x: torch.Tensor) -> nn.Module:
    return fold_batchnorm(copy.deepcopy(model).eval().to("cpu", torch.float32), example_inputs=x)


def _check(path: Path, model: nn.Module, example_inputs: torch.Tensor) -> float:
    """Largest relative max error of the ONNX file at :data:`CHECK_BATCHES` against eager ``model`` in float64."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    reference = copy.deepcopy(model).eval().to("cpu", torch.float64)
    worst = 0.0
    for batch in CHECK_BATCHES:
        x = check_batch(example_inputs, batch)
        got = torch.from_numpy(session.run(None, {"input": numpy_input(x)})[0])
        with torch.inference_mode():
            want = reference(x.double())
        worst = max(worst, max_relative_error(got, want))
    return worst


def write_onnx(model: nn.Module, example_inputs: torch.Tensor, out_dir: Path,
               notes: list[str]) -> dict[str, Any] | None:
    """Write ``out_dir/model.onnx`` and check it with ONNX Runtime; ``None`` (and a note) when it cannot be.

    Args:
        model: the compressed model (not modified: a folded CPU copy is exported).
        example_inputs: ``(1, C, H, W)``; its first sample sets the input shape and builds the check batches.
        out_dir: the run folder.
        notes: the report's notes; why the file is missing, or that it differs from eager, is added here.

    Returns:
        The report's ``onnx`` section: ``file``, ``input``/``output`` names, ``input_shape`` (``"batch"`` first),
        ``bn_folded``, ``checked_batches``, ``max_rel_error``, ``tolerance``, ``within_tolerance`` and the
        ``onnxruntime`` version that checked it.
    """
    ort = runtime("onnxruntime")
    missing = ort.available()
    if missing is not None:
        notes.append(f"{ONNX_FILE} not written: {missing}")
        return None
    x = example_inputs[:1].detach().to("cpu", torch.float32)
    try:
        folded = _folded(model, x)
        path = atomic_write_bytes(Path(out_dir) / ONNX_FILE, onnx_bytes(folded, x))
        error = _check(path, model, x)
    except Exception as err:  # noqa: BLE001 - a model the exporter cannot take is a note in the report, not a crash
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        notes.append(f"{ONNX_FILE} not written: ONNX export or its check failed ({type(err).__name__}: {first})")
        return None
    allowed = tolerance(device="cpu", dtype="float32")
    if error > allowed:
        notes.append(f"{ONNX_FILE} DIFFERS from the eager model: relative max error {error:.2e} > {allowed:g}")
        LOG.warning("%s differs from the eager model: relative max error %.2e", ONNX_FILE, error)
    return {"file": ONNX_FILE, "input": "input", "output": "output", "input_shape": ["batch", *x.shape[1:]],
            "bn_folded": True, "checked_batches": list(CHECK_BATCHES), "max_rel_error": error,
            "tolerance": allowed, "within_tolerance": error <= allowed, "onnxruntime": ort.version()}
