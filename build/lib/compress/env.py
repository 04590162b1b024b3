"""Where a run runs: seed, versions, device (the one resolver), threads, the cache root."""
from __future__ import annotations

import os
import platform
import random
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

__all__ = ["environment", "seed_everything", "resolve_device", "cpu_model", "package_version", "cache_root"]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or platform's best guess)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(package: str) -> str | None:
    """Installed version of ``package`` (a distribution name), ``None`` if absent.

    ``"compress"`` is this package's own version: it is installed as ``convnet-compress`` (the PyPI name
    ``compress`` belongs to an unrelated package, whose metadata must never be reported as ours).
    """
    if package == "compress":
        from . import __version__

        return __version__
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cache_root() -> Path:
    """Where compress caches baselines and latency tables: ``$COMPRESS_CACHE``, else ``~/.cache/compress``."""
    return Path(os.environ.get("COMPRESS_CACHE") or Path.home() / ".cache" / "compress")


def environment(*, seed: int, device: torch.device | str) -> dict[str, Any]:
    """A JSON-friendly record of the run's environment."""
    device = torch.device(device)
    env: dict[str, Any] = {
        "seed": seed,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: package_version(name) for name in
                     ("compress", "torch", "torchvision", "torch-pruning", "numpy", "pyyaml", "matplotlib", "onnx",
                      "onnxruntime", "openvino", "timm", "safetensors")},
        "cuda_available": torch.cuda.is_available(),
    }
    env["versions"]["torch"] = torch.__version__
    if device.type == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass
    torch.manual_seed(seed)


def resolve_device(device: torch.device | str, *, local_rank: int | None = None,
                   what: str = "device") -> torch.device:
    """The one device resolver: ``"auto"`` → CUDA when available else CPU; CPU or CUDA only.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a :class:`torch.device`.
        local_rank: with a bare ``"cuda"``, pin this process's GPU (``cuda:local_rank``; distributed runs).
        what: the setting named in errors (``"device"``, ``"latency device"``, ...).

    Raises:
        CompressError: CUDA requested where it is not available, or a device type other than CPU/CUDA.
    """
    from .errors import CompressError

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise CompressError(f"{what}: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise CompressError(f"{what}: expected 'cpu' or 'cuda', got {str(device)!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CompressError(f"{what} {str(device)!r}: CUDA is not available on this machine; use cpu or auto")
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
    return device
