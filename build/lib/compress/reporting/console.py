"""The short summary printed at the end of a run."""
from __future__ import annotations

from typing import Any

from . import fmt
from .tables import verdict_lines

__all__ = ["summary_text"]


def summary_text(report: dict[str, Any]) -> str:
    """A few aligned lines: params, MACs, accuracy before -> after, then one verdict line per latency row."""
    b, f = report["baseline"], report["final"]
    rows = [("params", fmt.count(b["params"]), fmt.count(f["params"])),
            ("MACs/sample", fmt.count(b["macs"]), fmt.count(f["macs"])),
            ("top-1", fmt.pct(b["top1"]), fmt.pct(f["top1"])),
            ("top-5", fmt.pct(b["top5"]), fmt.pct(f["top5"])),
            ("agreement", "", fmt.pct(f.get("agreement")))]
    lines = [f"{'':<12} {'baseline':>10}    {'final':>10}"]
    lines += [f"{name:<12} {before:>10} -> {after:>10}" for name, before, after in rows]
    verdicts = verdict_lines(report)
    lines += [f"latency  {v}" for v in verdicts] or ["latency  not measured"]
    if report["data"].get("synthetic"):
        lines.append("note     synthetic data: accuracies are not meaningful")
    return "\n".join(lines)
