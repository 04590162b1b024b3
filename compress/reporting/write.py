"""Write a report dict as ``report.json``, ``report.md`` and ``report.html`` (+ ``plots/*.png``)."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from ..io import atomic_write_json, atomic_write_text
from .analysis_plots import write_analysis_plots
from .html import image_sources, render_html
from .markdown import render_markdown
from .plots import (plot_accuracy_vs_latency, plot_accuracy_vs_macs, plot_layer_latency, plot_layer_macs,
                    plot_training)
from .schema import validate

__all__ = ["write_report", "PLOT_DIR"]

PLOT_DIR = "plots"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _report_plots(report: dict[str, Any], plot_dir: Path) -> list[Path]:
    makers = [(plot_layer_macs, "layer_macs.png"), (plot_layer_latency, "layer_latency.png"),
              (plot_accuracy_vs_macs, "accuracy_vs_macs.png"), (plot_accuracy_vs_latency, "accuracy_vs_latency.png"),
              (plot_training, "training.png")]
    written = [make(report, plot_dir / name) for make, name in makers]
    return [p for p in written if p is not None]


def _check_images(text: str, out_dir: Path) -> None:
    """Every image the HTML references must be a PNG file inside ``out_dir`` (a broken report is a bug)."""
    for src in image_sources(text):
        path = out_dir / src
        with open(path, "rb") as handle:  # FileNotFoundError names the missing plot
            if handle.read(8) != _PNG_SIGNATURE:
                raise ValueError(f"report.html references {src}, which is not a PNG file")


def write_report(report: dict[str, Any], out_dir: str | Path, *, plots: bool = True,
                 analysis: Any = None) -> list[Path]:
    """Write the report files into ``out_dir``.

    Args:
        report: from :func:`~compress.reporting.build.build_report` (not modified; the written copy gets the
            list of plots and any plotting notes).
        out_dir: destination folder (created if needed).
        plots: draw PNG plots into ``out_dir/plots/``.
        analysis: ``ctx.analysis``; when given (and ``plots``), dead-channel and correlation plots are added.

    Returns:
        The written files: ``report.json``, ``report.md``, ``report.html`` and the plots.
    """
    out_dir = Path(out_dir)
    report = copy.deepcopy(report)
    written: list[Path] = []
    if plots:
        written = _report_plots(report, out_dir / PLOT_DIR)
        if analysis is not None:
            extra, notes = write_analysis_plots(analysis, out_dir / PLOT_DIR)
            written += extra
            report["notes"] += notes
    report["plots"] = [p.relative_to(out_dir).as_posix() for p in written]
    validate(report)
    page = render_html(report)
    _check_images(page, out_dir)
    files = [atomic_write_json(out_dir / "report.json", report),
             atomic_write_text(out_dir / "report.md", render_markdown(report)),
             atomic_write_text(out_dir / "report.html", page)]
    return files + written
