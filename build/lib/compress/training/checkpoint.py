"""Resumable training checkpoints: atomic writes and capture/restore of every random number generator.

Everything stored is a tensor or plain Python data, so checkpoints load with ``torch.load(weights_only=True)``
(NumPy's generator state is converted to a tensor).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CompressError
from ..io import atomic_torch_save

__all__ = ["rng_state", "set_rng_state", "save_checkpoint", "load_checkpoint"]

FORMAT = "compress.training/1"


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Snapshot of the torch (CPU, CUDA), NumPy, Python and optional loader generators."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
        # Only the current device: touching every visible GPU would create a context on each from every rank.
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }
    if generator is not None:
        state["loader"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore a :func:`rng_state` snapshot (the loader generator only when both exist)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"][0])
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` (plus a format tag) to ``path``; a kill never leaves a torn file."""
    return atomic_torch_save({"format": FORMAT, **state}, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU.

    Raises:
        CompressError: the file is unreadable or not a ``compress`` training checkpoint.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupted / foreign file: the user must point at a valid checkpoint
        raise CompressError(f"checkpoint {path}: cannot be read ({type(err).__name__}: {err}); "
                            "expected a file written by compress training") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CompressError(f"checkpoint {path}: not a compress training checkpoint (expected format {FORMAT})")
    return state
