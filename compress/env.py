"""What a run records about where it ran: seed, versions, device, threads."""
from __future__ import annotations

import os
import platform
import random
from importlib import metadata
from typing import Any

import torch

__all__ = ["environment", "seed_everything", "resolve_device", "cpu_model"]


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


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


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
        "versions": {name: _version(name) for name in
                     ("compress", "torch", "torchvision", "torch-pruning", "numpy", "pyyaml", "matplotlib")},
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


def resolve_device(name: str, *, local_rank: int = 0) -> torch.device:
    """``auto`` → CUDA when available else CPU; ``cuda`` without a GPU is a user error."""
    from .errors import CompressError

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CompressError(f"device: {name} requested but CUDA is not available on this machine; use cpu or auto")
        if name == "cuda":
            name = f"cuda:{local_rank}"
    return torch.device(name)
