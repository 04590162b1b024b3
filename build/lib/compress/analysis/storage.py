"""Saving an :class:`~compress.analysis.result.Analysis` to a directory and loading it back without rerunning.

Layout of the directory: ``analysis.json`` (human/JSON summary: layers, points, dead channels with reasons
and values, per-layer counts) and ``analysis.pt`` (all tensors; the source of truth for :func:`load_analysis`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CompressError
from ..io import atomic_torch_save, atomic_write_json
from .result import Analysis

__all__ = ["save_analysis", "load_analysis", "JSON_NAME", "TENSORS_NAME"]

JSON_NAME = "analysis.json"
TENSORS_NAME = "analysis.pt"


def save_analysis(analysis: Analysis, path: str | Path, *, apoz_threshold: float = 0.99) -> Path:
    """Write ``analysis`` into directory ``path`` (created if needed); returns the directory."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CompressError(f"analysis: cannot save into {str(path)!r}: it exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    dead = analysis.dead_channels(apoz_threshold=apoz_threshold)
    doc = {"summary": analysis.summary(apoz_threshold=apoz_threshold),
           "dead_channels": {layer: {str(c): d.to_dict() for c, d in chans.items()} for layer, chans in dead.items()}}
    atomic_torch_save(analysis.state(), path / TENSORS_NAME)
    atomic_write_json(path / JSON_NAME, doc)
    return path


def load_analysis(path: str | Path) -> Analysis:
    """Restore an :class:`Analysis` saved by :meth:`Analysis.save` (reads ``path/analysis.pt``)."""
    file = Path(path) / TENSORS_NAME
    if not file.is_file():
        raise CompressError(f"analysis: {str(file)!r} not found; expected a directory written by Analysis.save")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        if state.get("format") != 1:
            raise ValueError(f"unknown format {state.get('format')!r}")
        return Analysis.from_state(state)
    except Exception as err:  # a truncated or foreign file: the user's input, not a bug
        raise CompressError(f"analysis: cannot read {str(file)!r}: {err}") from None
