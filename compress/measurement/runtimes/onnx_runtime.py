"""The ``onnxruntime`` runtime: the model exported to ONNX (dynamic batch) and run by ONNX Runtime.

On CPU it uses the ``CPUExecutionProvider`` with ``intra_op_num_threads`` and ``inter_op_num_threads`` set to
the requested threads (sequential execution: nodes run one after another, each on up to that many threads), and
its thread pools do not spin-wait between runs. ONNX Runtime's default busy-waits for work after each run; timed
interleaved with other models and runtimes in one process, those spinning threads take the cores from whatever
runs next: measured on this 2-core machine (small ResNet, batch 64, eager torch / ORT / OpenVINO interleaved), the
eager baseline's IQR was 23-28 ms on a 10-11 ms median with spinning and 0.2 ms on a 4.4-6.0 ms median without.
A deployment that runs one ORT session back to back may keep spinning on; it then gains at most the wake-up
latency, which the times here do not include.
On CUDA it uses the TensorRT and CUDA providers that ``onnxruntime.get_available_providers()`` lists, and
refuses when it lists neither; inputs and outputs then cross the host (NumPy), which the times include.
"""
from __future__ import annotations

import torch
from torch import nn

from ...serialization import onnx_bytes
from ..timing import dtype_name
from .registry import Runtime, Session, missing_modules, numpy_input, register_runtime

__all__ = ["OnnxRuntime", "CUDA_PROVIDERS"]

CUDA_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")  # preference order


@register_runtime
class OnnxRuntime(Runtime):
    """ONNX Runtime, float32, on the CPU provider (or listed CUDA/TensorRT providers on CUDA)."""

    name = "onnxruntime"
    revision = 1  # 1: thread pools no longer spin-wait between runs
    devices = ("cpu", "cuda")
    dtypes = ("float32",)

    def available(self) -> str | None:
        return missing_modules("onnxruntime", "onnx", "onnxscript")  # onnx + onnxscript: torch.onnx's exporter

    def version(self) -> str:
        if self.available() is not None:
            return ""
        import onnxruntime

        return onnxruntime.__version__

    def providers(self, device: torch.device | str) -> list[str]:
        """Execution providers for ``device`` in preference order (empty: none for it here)."""
        import onnxruntime

        if torch.device(device).type == "cpu":
            return ["CPUExecutionProvider"]
        listed = onnxruntime.get_available_providers()
        return [p for p in CUDA_PROVIDERS if p in listed]

    def unsupported(self, *, device: torch.device | str, dtype: torch.dtype | str) -> str | None:
        reason = super().unsupported(device=device, dtype=dtype)
        if reason is None and not self.providers(device):
            import onnxruntime

            return (f"onnxruntime lists no {' or '.join(CUDA_PROVIDERS)} (available: "
                    f"{', '.join(onnxruntime.get_available_providers())})")
        return reason

    def build(self, model: nn.Module, x: torch.Tensor, *, device: torch.device, dtype: torch.dtype, threads: int,
              channels_last: bool) -> Session:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = threads
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        for pool in ("intra_op", "inter_op"):  # no busy-waiting between runs (see the module docstring)
            options.add_session_config_entry(f"session.{pool}.allow_spinning", "0")
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: ORT's warnings go to stderr, not to logging
        wanted = self.providers(device)
        fallback = [] if device.type == "cpu" else ["CPUExecutionProvider"]
        ort_session = onnxruntime.InferenceSession(onnx_bytes(model, x), options, providers=wanted + fallback)
        in_force = ort_session.get_providers()
        if not set(wanted) & set(in_force):
            raise RuntimeError(f"none of {', '.join(wanted)} could be loaded (in force: {', '.join(in_force)})")
        input_name = ort_session.get_inputs()[0].name
        return Session(runtime=self.name, device=str(device), dtype=dtype_name(dtype), threads=threads,
                       batch=x.shape[0], feed=numpy_input, run=lambda a: ort_session.run(None, {input_name: a}),
                       fetch=lambda outputs: torch.from_numpy(outputs[0]),
                       info={"providers": in_force, "intra_op_num_threads": threads,
                             "inter_op_num_threads": threads, "execution_mode": "sequential", "allow_spinning": False,
                             "graph_optimization_level": "all"})
