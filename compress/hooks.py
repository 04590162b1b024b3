"""One way to run a model with forward hooks attached: the hooks always come off again, also on error."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from .modes import evaluating

__all__ = ["forward_hooks", "probe"]

Hook = Callable[[nn.Module, tuple, Any], Any]


@contextlib.contextmanager
def forward_hooks(pairs: Iterable[tuple[nn.Module, Hook]]) -> Iterator[None]:
    """Register ``module.register_forward_hook(hook)`` for each ``(module, hook)`` inside the block."""
    handles = []
    try:
        for module, hook in pairs:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


def probe(model: nn.Module, pairs: Iterable[tuple[nn.Module, Hook]], *args: Any, **kwargs: Any) -> Any:
    """One forward ``model(*args, **kwargs)`` in eval mode, without autograd, with the forward hooks ``pairs``
    attached; returns the output. The model's train/eval flags and its hooks are as they were afterwards."""
    with forward_hooks(pairs), evaluating(model), torch.no_grad():
        return model(*args, **kwargs)
