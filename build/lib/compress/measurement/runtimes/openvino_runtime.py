"""The ``openvino`` runtime: the model's ONNX export (dynamic batch) compiled by OpenVINO for the CPU.

Compiled with ``PERFORMANCE_HINT=LATENCY``, ``INFERENCE_NUM_THREADS`` set to the requested threads and
``INFERENCE_PRECISION_HINT`` set to the requested dtype: without it OpenVINO computes in bf16 on CPUs that
support it, which would time (and check) a different precision than the one asked for.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...serialization import onnx_bytes
from ..timing import dtype_name
from .registry import Runtime, Session, missing_modules, numpy_input, register_runtime

__all__ = ["OpenVinoRuntime", "PRECISION_HINTS"]

# compress dtype -> (INFERENCE_PRECISION_HINT, the CPU's OPTIMIZATION_CAPABILITIES entry it needs)
PRECISION_HINTS = {"float32": ("f32", "FP32"), "bfloat16": ("bf16", "BF16"), "float16": ("f16", "FP16")}
_REPORTED = ("PERFORMANCE_HINT", "INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT", "NUM_STREAMS",
             "ENABLE_CPU_PINNING")


@register_runtime
class OpenVinoRuntime(Runtime):
    """OpenVINO on the CPU, in float32 (bfloat16/float16 where the CPU lists them as capabilities)."""

    name = "openvino"
    devices = ("cpu",)
    dtypes = tuple(PRECISION_HINTS)

    def available(self) -> str | None:
        return missing_modules("openvino", "onnx", "onnxscript")  # onnx + onnxscript: torch.onnx's exporter

    def version(self) -> str:
        if self.available() is not None:
            return ""
        import openvino

        return openvino.__version__.split("-")[0]

    def unsupported(self, *, device: torch.device | str, dtype: torch.dtype | str) -> str | None:
        reason = super().unsupported(device=device, dtype=dtype)
        if reason is None:
            import openvino

            needed = PRECISION_HINTS[dtype_name(dtype)][1]
            capabilities = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            if needed not in capabilities:
                return f"this CPU lacks {needed} (OpenVINO CPU capabilities: {', '.join(capabilities)})"
        return reason

    def build(self, model: nn.Module, x: torch.Tensor, *, device: torch.device, dtype: torch.dtype, threads: int,
              channels_last: bool) -> Session:
        import openvino

        core = openvino.Core()
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
                  "INFERENCE_PRECISION_HINT": PRECISION_HINTS[dtype_name(dtype)][0]}
        compiled = core.compile_model(core.read_model(onnx_bytes(model, x)), "CPU", config)
        request = compiled.create_infer_request()
        return Session(runtime=self.name, device=str(device), dtype=dtype_name(dtype), threads=threads,
                       batch=x.shape[0], feed=numpy_input, run=lambda a: request.infer(a, share_inputs=True),
                       fetch=lambda outputs: torch.from_numpy(outputs[0]),
                       info={key: _plain(compiled.get_property(key)) for key in _REPORTED})


def _plain(value: Any) -> Any:
    """An OpenVINO property value as JSON-friendly data (``Type.f32`` -> ``"f32"``)."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)
