"""The ``torch-compile`` runtime: ``torch.compile`` with the default inductor backend.

On CPU inductor generates C++ and needs a C++ compiler; on CUDA it generates Triton kernels. Compilation
happens on the first call at each new input shape, so :meth:`Runtime.session`'s check call compiles, and a
failure there is a :class:`~compress.errors.CompressError` naming the runtime, never a raw traceback.
"""
from __future__ import annotations

import shutil

import torch

from .eager import TorchRuntime
from .registry import register_runtime

__all__ = ["TorchCompileRuntime"]


def _cpp_compiler() -> str | None:
    """Path of the C++ compiler inductor would call (``None`` when there is none)."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return shutil.which(get_cpp_compiler())
    except Exception:  # noqa: BLE001 - inductor raises when it finds no compiler
        return None


@register_runtime
class TorchCompileRuntime(TorchRuntime):
    """``torch.compile(model)`` (inductor), on CPU (C++) or CUDA (Triton)."""

    name = "torch-compile"
    compile = True

    def available(self) -> str | None:
        import torch._dynamo

        if not torch._dynamo.is_dynamo_supported():
            return "torch.compile is not supported on this Python/platform"
        if _cpp_compiler() is None:
            return "inductor found no C++ compiler (install g++ or set CXX)"
        return None

    def unsupported(self, *, device: torch.device | str, dtype: torch.dtype | str) -> str | None:
        reason = super().unsupported(device=device, dtype=dtype)
        if reason is None and torch.device(device).type == "cuda":
            from torch.utils._triton import has_triton

            if not has_triton():
                return "inductor needs triton on CUDA (not installed or no supported GPU)"
        return reason
