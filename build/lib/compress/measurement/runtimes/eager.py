"""The ``torch`` runtime: eager PyTorch, the path :func:`~compress.measurement.latency.compare_latency` times."""
from __future__ import annotations

import torch
from torch import nn

from ..timing import dtype_name, prepare, to_layout
from .registry import Runtime, Session, register_runtime

__all__ = ["TorchRuntime"]


@register_runtime
class TorchRuntime(Runtime):
    """Eager PyTorch on CPU or CUDA in float32, bfloat16 or float16 (optionally channels_last).

    Threads are torch's global intra-op setting: the session sets it around each ``session(x)``; timing sets
    it once around the whole measurement.
    """

    name = "torch"
    devices = ("cpu", "cuda")
    dtypes = ("float32", "bfloat16", "float16")
    compile = False  # wrap the module in torch.compile (the torch-compile runtime)

    def version(self) -> str:
        return torch.__version__

    def build(self, model: nn.Module, x: torch.Tensor, *, device: torch.device, dtype: torch.dtype, threads: int,
              channels_last: bool) -> Session:
        twin = prepare(model, device=device, dtype=dtype, channels_last=channels_last, compile=self.compile)
        return Session(runtime=self.name, device=str(device), dtype=dtype_name(dtype),
                       threads=threads, batch=x.shape[0],
                       feed=lambda t: to_layout(t, device=device, dtype=dtype, channels_last=channels_last),
                       run=twin, fetch=lambda out: out,
                       info={"channels_last": channels_last, "compiled": self.compile})
