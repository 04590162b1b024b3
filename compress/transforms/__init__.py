"""Transforms: functions from a module (plus parameters) to a module, and model-level appliers.

Rewrites (``to_grouped``, ``to_separable``, ``to_shuffled``, ``to_dilated``, ``to_bottleneck``, ``rewrite``) and
dependency-aware channel pruning (``prune``) built on torch-pruning.
"""
from __future__ import annotations

import importlib
from typing import Any

_API = {
    "to_grouped": "compress.transforms.grouped",
    "to_separable": "compress.transforms.separable",
    "to_shuffled": "compress.transforms.shuffle",
    "to_dilated": "compress.transforms.dilated",
    "to_bottleneck": "compress.transforms.bottleneck",
    "rewrite": "compress.transforms.rewrite",
    "RewriteRecord": "compress.transforms.rewrite",
    "prune": "compress.transforms.prune",
    "ChannelShuffle": "compress.transforms.modules",
    "ChannelPermute": "compress.transforms.modules",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'compress.transforms' has no attribute {name!r}")
