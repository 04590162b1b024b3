"""``report.html``: a self-contained page (inline CSS) with the report's tables and its PNG plots.

Plots are referenced relatively (``plots/NAME.png``) so the folder can be moved or zipped as a whole;
:func:`image_sources` lists them so the writer can check every one exists.
"""
from __future__ import annotations

import html
import re
from typing import Any

from .tables import sections

__all__ = ["render_html", "image_sources"]

_CSS = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;"
        "font-size:13px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%;border:1px solid #eee;margin:.5em 0}.slower{color:#b00;font-weight:bold}")


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: str) -> str:
    text = html.escape(str(value))
    return f'<span class="slower">{text}</span>' if "SLOWER" in text else text


def render_html(report: dict[str, Any]) -> str:
    """The HTML text of ``report``."""
    out = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>Compression report</title>",
           f"<style>{_CSS}</style></head><body><h1>Compression report</h1>"]
    for sec in sections(report):
        out.append(f"<h2>{html.escape(sec.title)}</h2>")
        if sec.lines:
            out.append("<ul>" + "".join(f"<li>{_cell(line)}</li>" for line in sec.lines) + "</ul>")
        if sec.rows:
            out.append(_table(sec.header, sec.rows))
    if report.get("plots"):
        out.append("<h2>Plots</h2>")
        out += [f'<p><img src="{html.escape(p)}" alt="{html.escape(p)}"></p>' for p in report["plots"]]
    out.append("</body></html>")
    return "\n".join(out)


def image_sources(text: str) -> list[str]:
    """The ``src`` of every ``<img>`` in an HTML text (unescaped)."""
    return [html.unescape(m) for m in re.findall(r'<img\s[^>]*src="([^"]+)"', text)]
