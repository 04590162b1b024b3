"""PNG plots of a report: per-layer MACs and latency before/after, and accuracy-vs-cost (Pareto) views.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot), so no global backend or figure
state is touched and nothing needs a display. Each function returns the written path, or ``None`` when the
report holds no data for that plot.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ..io import atomic_write

__all__ = ["plot_layer_macs", "plot_layer_latency", "plot_accuracy_vs_macs", "plot_accuracy_vs_latency",
           "plot_training"]

_DPI = 100


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    return atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=_DPI))


def _before_after(rows: list[dict[str, Any]], before: str, after: str, path: Path, *, xlabel: str,
                  title: str) -> Path | None:
    rows = [r for r in rows if r[before] or r[after]]
    if not rows:
        return None
    fig = Figure(figsize=(8, 1.5 + 0.22 * len(rows)))
    ax = fig.subplots()
    ys = range(len(rows))
    ax.barh([y - 0.2 for y in ys], [r[before] or 0 for r in rows], height=0.4, label="before")
    ax.barh([y + 0.2 for y in ys], [r[after] or 0 for r in rows], height=0.4, label="after")
    ax.set_yticks(list(ys), [r["name"] for r in rows], fontsize=7)
    ax.invert_yaxis()  # forward order from the top
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_layer_macs(report: dict[str, Any], path: Path) -> Path | None:
    """Horizontal bars of MACs per layer, baseline vs compressed."""
    return _before_after(report["layers"], "macs_before", "macs_after", path, xlabel="MACs per sample",
                         title="MACs per layer (before vs after)")


def plot_layer_latency(report: dict[str, Any], path: Path) -> Path | None:
    """Horizontal bars of measured ms per layer, baseline vs compressed (hook timings)."""
    timing = report.get("layers_timing")
    if not timing:
        return None
    return _before_after(report["layers"], "ms_before", "ms_after", path, xlabel="ms (median)",
                         title=f"Per-layer latency, {timing['device']} {timing['dtype']} batch {timing['batch']}")


def _scatter(points: list[tuple[str, float, float]], path: Path, *, xlabel: str, title: str) -> Path:
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    xs, ys = [p[1] for p in points], [100 * p[2] for p in points]
    ax.plot(xs, ys, "-o", color="tab:blue", alpha=0.8)  # the path the recipe took, step by step
    for name, x, y in points:
        ax.annotate(name, (x, 100 * y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_accuracy_vs_macs(report: dict[str, Any], path: Path) -> Path | None:
    """Top-1 vs MACs for every step that measured both (the Pareto view of the recipe)."""
    points = [(s["name"], s["metrics"]["macs"], s["metrics"]["top1"]) for s in report["steps"]
              if s["metrics"].get("macs") is not None and s["metrics"].get("top1") is not None]
    if not points:
        return None
    return _scatter(points, path, xlabel="MACs per sample", title="Accuracy vs MACs, per step")


def plot_accuracy_vs_latency(report: dict[str, Any], path: Path) -> Path | None:
    """Top-1 vs measured latency: baseline and final model (intermediate models are not kept to be timed).

    Uses the first latency row (its device, dtype and batch are in the title).
    """
    if not report["latency"]:
        return None
    row, b, f = report["latency"][0], report["baseline"], report["final"]
    if b.get("top1") is None or f.get("top1") is None:
        return None
    points = [("baseline", row["baseline_ms"], b["top1"]), ("final", row["compressed_ms"], f["top1"])]
    return _scatter(points, path, xlabel="ms per batch (median)",
                    title=f"Accuracy vs latency, {row['device']} {row['dtype']} batch {row['batch']}")


def plot_training(report: dict[str, Any], path: Path) -> Path | None:
    """Training loss per optimizer step of every fine-tune (and val accuracy per epoch on a second axis)."""
    curves = [(s["name"], s["details"]["curve"]) for s in report["steps"]
              if s["kind"] == "finetune" and (s.get("details") or {}).get("curve", {}).get("loss")]
    if not curves:
        return None
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    acc = None
    for name, c in curves:
        ax.plot(c["step"], c["loss"], label=f"{name} loss")
        ends, total = [], 0
        for e in c["epochs"]:  # each epoch's last optimizer step (its "steps" counts the epoch's own)
            total += e.get("steps") or 0
            ends.append((total, e.get("val_acc")))
        points = [(step, 100 * a) for step, a in ends if a is not None]
        if points:
            acc = acc or ax.twinx()
            acc.plot([p[0] for p in points], [p[1] for p in points], "o--", label=f"{name} val top-1")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("Fine-tuning")
    ax.legend(loc="upper left")
    if acc is not None:
        acc.set_ylabel("val top-1 (%)")
        acc.legend(loc="upper right")
    return _save(fig, path)
