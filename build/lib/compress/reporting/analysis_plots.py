"""Dead-channel and correlation plots of ``ctx.analysis``, drawn by :mod:`compress.analysis.plots`.

The analysis package owns those plots; this module only picks layers and turns any failure into a note in
the report (a missing plot must be visible, but must not lose the rest of the report).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

__all__ = ["write_analysis_plots", "analysis_layers"]

MAX_CORRELATION_PLOTS = 4


def analysis_layers(analysis: Any) -> list[str]:
    """Layer names an analysis covers, from ``analysis.layers`` (mapping, or list of names/objects)."""
    layers = getattr(analysis, "layers", None)
    if isinstance(layers, dict):
        return [str(k) for k in layers]
    if isinstance(layers, (list, tuple)):
        return [str(getattr(x, "name", x)) for x in layers]
    return []


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def write_analysis_plots(analysis: Any, plot_dir: Path) -> tuple[list[Path], list[str]]:
    """Liveness plot plus correlation plots of the first few layers.

    Returns:
        ``(written paths, notes)``; a note explains each plot that could not be drawn.
    """
    try:
        from ..analysis.plots import plot_correlation, plot_liveness
    except ImportError as err:
        return [], [f"analysis plots skipped: compress.analysis.plots is unavailable ({err})"]
    written: list[Path] = []
    notes: list[str] = []
    jobs = [("liveness.png", lambda p: plot_liveness(analysis, p))]
    for layer in analysis_layers(analysis)[:MAX_CORRELATION_PLOTS]:
        jobs.append((f"correlation_{_slug(layer)}.png", lambda p, layer=layer: plot_correlation(analysis, layer, p)))
    if len(jobs) == 1:
        notes.append("correlation plots skipped: the analysis lists no layers (expected analysis.layers)")
    for name, draw in jobs:
        path = plot_dir / name
        try:
            draw(path)
        except Exception as err:  # noqa: BLE001 -- reported as a note, see module docstring
            notes.append(f"analysis plot {name} failed: {type(err).__name__}: {err}")
            continue
        if path.is_file():
            written.append(path)
        else:
            notes.append(f"analysis plot {name} was not written by compress.analysis.plots")
    return written, notes
