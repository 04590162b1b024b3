"""The one module setter: every place that attaches, swaps or removes a submodule goes through :func:`set_module`."""
from __future__ import annotations

from torch import nn

__all__ = ["set_module"]


def set_module(root: nn.Module, path: str, module: nn.Module | None) -> None:
    """Attach ``module`` at the dotted ``path`` under ``root`` (replacing what is there); ``None`` removes it.

    Raises:
        AttributeError: a parent on ``path`` does not exist (``root`` itself cannot be replaced).
    """
    if not path:
        raise AttributeError("set_module: the root module itself cannot be replaced")
    if module is None:
        parent_path, _, name = path.rpartition(".")
        delattr(root.get_submodule(parent_path) if parent_path else root, name)
    else:
        root.set_submodule(path, module)
