"""``report.md``: the report's sections as Markdown tables, with the plots linked relatively."""
from __future__ import annotations

from typing import Any

from .fmt import table_md
from .tables import sections

__all__ = ["render_markdown"]


def render_markdown(report: dict[str, Any]) -> str:
    """The Markdown text of ``report`` (plots referenced from ``report["plots"]``, relative to the file)."""
    parts = ["# Compression report", ""]
    for sec in sections(report):
        parts += [f"## {sec.title}", ""]
        bullets = sec.title in ("Summary", "Notes", "Environment") or sec.title.startswith("Plan (")
        parts += [f"- {line}" if bullets else line for line in sec.lines]
        if sec.lines:
            parts.append("")
        if sec.rows:
            parts += [table_md(sec.header, sec.rows), ""]
    if report.get("plots"):
        parts += ["## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]] + [""]
    return "\n".join(parts)
