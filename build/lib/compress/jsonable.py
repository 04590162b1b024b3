"""Turn step records and report values (tensors, dataclasses, numpy scalars, paths) into strict JSON values."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

__all__ = ["jsonable"]

_MAX_TENSOR_ITEMS = 64  # larger tensors are summarised by shape, not dumped into the report


def _tensor(t: torch.Tensor) -> Any:
    if t.numel() == 1:
        return jsonable(t.item())
    if t.numel() <= _MAX_TENSOR_ITEMS:
        return jsonable(t.detach().cpu().tolist())
    return {"tensor": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}


def jsonable(obj: Any) -> Any:
    """A JSON-serialisable copy of ``obj``; NaN/inf become ``None`` (strict JSON has no NaN)."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, torch.Tensor):
        return _tensor(obj)
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (Path, torch.device, torch.dtype)):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        try:
            return jsonable(obj.item())
        except (TypeError, ValueError):
            pass
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays
        return jsonable(obj.tolist())
    return str(obj)
