"""Number formatting shared by the Markdown, HTML and console renderings (``None`` shows as ``-``)."""
from __future__ import annotations

from typing import Any

__all__ = ["count", "pct", "ms", "ratio", "num", "table_md"]


def count(v: int | None) -> str:
    """``12345678 -> "12.35M"``; small counts stay exact."""
    if v is None:
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(v) >= div:
            return f"{v / div:.2f}{suffix}"
    return str(v)


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def num(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def table_md(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured Markdown table (pipes in cells escaped)."""
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
