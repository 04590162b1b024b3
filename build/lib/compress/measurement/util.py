"""Helpers shared by the measurement modules: leaf modules, input unpacking, train-mode restoration."""
from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn


__all__ = ["leaf_modules", "forward_inputs", "tensor_shape", "model_device"]


def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` for every module without children (the root is named ``"(model)"``)."""
    return [(name or "(model)", m) for name, m in model.named_modules() if next(m.children(), None) is None]


def forward_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    """Split ``example_inputs`` into ``(args, kwargs)``: a tensor, a tuple/list of args, or a dict of kwargs."""
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def tensor_shape(tensors: list[torch.Tensor]) -> list[int] | None:
    """Shape of the first tensor as a list, or ``None`` when there is none."""
    return list(tensors[0].shape) if tensors else None


def model_device(model: nn.Module, *, single: bool = False) -> torch.device | None:
    """Device of the model's first parameter or buffer (CPU for a stateless model).

    With ``single=True``: the one device holding every parameter and buffer, ``None`` when the model is spread
    over several (and so must not be moved as a whole).
    """
    tensors = itertools.chain(model.parameters(), model.buffers())
    if single:
        devices = {t.device for t in tensors}
        return devices.pop() if len(devices) == 1 else (None if devices else torch.device("cpu"))
    first = next(tensors, None)
    return first.device if first is not None else torch.device("cpu")
