"""Reading one layer's input or output from a forward pass, stopping the pass there; call order and counts.

The forward stops (a private exception raised in the hook) as soon as the tensor is taken, so the layers after
it do not run and nothing later can modify it in place.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["layer_input", "layer_output", "call_order"]


class _Stop(Exception):
    """Raised by a capture hook to end the forward pass once its tensor is taken."""


def _run(model: nn.Module, x: torch.Tensor, module: nn.Module, *, output: bool) -> torch.Tensor:
    taken: list[torch.Tensor] = []

    def take(tensor: torch.Tensor) -> None:
        taken.append(tensor.detach())
        raise _Stop

    handle = (module.register_forward_hook(lambda m, args, out: take(out)) if output
              else module.register_forward_pre_hook(lambda m, args: take(args[0])))
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not taken:
        raise RuntimeError(f"the forward pass never called {type(module).__name__}")
    return taken[0]


def layer_input(model: nn.Module, x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """The first positional input of ``module``'s first call when ``model`` runs on ``x``."""
    return _run(model, x, module, output=False)


def layer_output(model: nn.Module, x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """The output of ``module``'s first call when ``model`` runs on ``x``."""
    return _run(model, x, module, output=True)


def call_order(model: nn.Module, x: torch.Tensor, names: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """``(names in order of first call, calls per forward by name)`` for one full forward on ``x``."""
    order: list[str] = []
    counts = dict.fromkeys(names, 0)

    def seen(name: str) -> None:
        if not counts[name]:
            order.append(name)
        counts[name] += 1

    handles = [model.get_submodule(n).register_forward_pre_hook(lambda m, args, n=n: seen(n)) for n in names]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return order, counts
