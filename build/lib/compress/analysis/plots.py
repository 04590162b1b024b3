"""PNG plots of an :class:`~compress.analysis.result.Analysis` for the report.

Uses matplotlib's object API with the Agg canvas directly (no ``pyplot``), so importing this never changes the
process-wide backend and works headless.
"""
from __future__ import annotations

import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..io import atomic_write_bytes
from .dead import DEAD_KINDS
from .result import Analysis

__all__ = ["plot_liveness", "plot_correlation"]

_COLORS = {"live": "#4c72b0", "zero_filter": "#c44e52", "zero_gamma": "#dd8452", "constant": "#8172b3",
           "apoz": "#937860"}


def _save(fig: Figure, path: str | Path) -> Path:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def plot_liveness(analysis: Analysis, path: str | Path, *, apoz_threshold: float = 0.99) -> Path:
    """Horizontal stacked bars per conv layer: live channels and dead channels by reason. Returns ``path``."""
    dead = analysis.dead_channels(apoz_threshold=apoz_threshold)
    layers = analysis.layers
    fig = Figure(figsize=(8, 1.5 + 0.22 * len(layers)))
    ax = fig.subplots()
    left = [0] * len(layers)
    counts = {"live": [analysis.info[l].channels - len(dead[l]) for l in layers]}
    counts.update({k: [sum(d.kind == k for d in dead[l].values()) for l in layers] for k in DEAD_KINDS})
    for kind, values in counts.items():
        ax.barh(range(len(layers)), values, left=left, color=_COLORS[kind], label=kind.replace("_", " "))
        left = [a + b for a, b in zip(left, values)]
    ax.set_yticks(range(len(layers)), labels=layers, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("channels")
    ax.set_title(f"Channel liveness ({sum(map(len, dead.values()))} dead of {sum(left)})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    return _save(fig, path)


def plot_correlation(analysis: Analysis, layer: str, path: str | Path, *, groups: int | None = None) -> Path:
    """Heatmap of ``|corr|`` of ``layer`` with channels ordered by suggested groups (lines mark group edges).

    Args:
        groups: group count to order by (default: :meth:`Analysis.supported_groups`; 1 keeps channel order).
    """
    corr = analysis.correlation(layer).abs()
    groups = analysis.supported_groups(layer) if groups is None else groups
    partition = analysis.suggest_groups(layer, groups)
    order = [c for group in partition for c in group]
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    im = ax.imshow(corr[order][:, order].numpy(), vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
    edge = 0
    for group in partition[:-1]:
        edge += len(group)
        ax.axhline(edge - 0.5, color="white", lw=0.6)
        ax.axvline(edge - 0.5, color="white", lw=0.6)
    score = analysis.group_score(layer, partition)
    ax.set_title(f"{layer}: |corr|, {groups} group(s), score {score:.2f}", fontsize=9)
    if len(order) <= 32:  # small layers: label the actual channel indices
        ax.set_xticks(range(len(order)), labels=order, fontsize=6)
        ax.set_yticks(range(len(order)), labels=order, fontsize=6)
    ax.set_xlabel("channel (grouped order)")
    fig.colorbar(im, ax=ax)
    return _save(fig, path)
