"""Per-layer before/after rows: MACs and params from :func:`cost`, times from :func:`layer_latency`.

Pruning keeps module names, so rows match one-to-one. A rewrite replaces a conv ``a.b`` by a container whose
leaves are ``a.b.0``, ``a.b.1`` ...; those leaves are summed into the row of ``a.b``. A new leaf with no
baseline ancestor gets its own row with empty "before" columns.
"""
from __future__ import annotations

from typing import Any

from ..measurement import Cost, LayerLatency

__all__ = ["layer_rows"]


def _owner(name: str, before: set[str]) -> str:
    """The baseline leaf ``name`` belongs to: itself, its longest baseline ancestor, or itself if none."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        candidate = ".".join(parts[:cut])
        if candidate in before:
            return candidate
    return name


def _add(row: dict[str, Any], key: str, value: float | int | None) -> None:
    if value is not None:
        row[key] = (row[key] or 0) + value


def layer_rows(before: Cost, after: Cost, *, ms_before: LayerLatency | None = None,
               ms_after: LayerLatency | None = None) -> list[dict[str, Any]]:
    """One row per baseline leaf module (plus new leaves), in forward order.

    Returns:
        Rows ``{name, type, macs_before, macs_after, params_before, params_after, ms_before, ms_after}``;
        ``None`` where not measured or absent (a layer removed by compression has ``macs_after`` None).
    """
    rows: dict[str, dict[str, Any]] = {}
    for r in before.layers:
        rows[r.name] = {"name": r.name, "type": r.type, "macs_before": r.macs, "macs_after": None,
                        "params_before": r.params, "params_after": None,
                        "ms_before": ms_before.ms.get(r.name) if ms_before else None, "ms_after": None}
    names = set(rows)
    for r in after.layers:
        key = _owner(r.name, names)
        row = rows.setdefault(key, {"name": key, "type": r.type, "macs_before": None, "macs_after": None,
                                    "params_before": None, "params_after": None, "ms_before": None,
                                    "ms_after": None})
        _add(row, "macs_after", r.macs)
        _add(row, "params_after", r.params)
        if ms_after is not None:
            _add(row, "ms_after", ms_after.ms.get(r.name))
    for row in rows.values():
        for key in ("ms_before", "ms_after"):
            row[key] = round(row[key], 6) if row[key] is not None else None
    return list(rows.values())
