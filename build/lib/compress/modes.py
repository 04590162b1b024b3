"""One way to leave a model's train/eval flags as they were: every helper that flips them uses this."""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

__all__ = ["restore_training", "evaluating"]


@contextlib.contextmanager
def restore_training(model: nn.Module) -> Iterator[nn.Module]:
    """Restore every submodule's ``training`` flag on exit (modules may be in mixed modes, e.g. frozen BN).

    torch-pruning's tracing and one-off probing forwards call ``model.eval()``; a user's model must come back
    exactly as it went in, also on error.
    """
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Every submodule in eval mode inside the block; each one's own ``training`` flag restored on exit."""
    with restore_training(model):
        model.eval()
        yield model
