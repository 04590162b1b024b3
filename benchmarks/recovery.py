"""Measured accuracy recovery of two recipes on the Fashion-MNIST ResNet-style baseline (issues 6 and 5).

- ``recipes/prune50_fmnist.yaml`` (issue 6): analysis-driven pruning to 50% of the MACs, BN re-calibration,
  distillation fine-tune. Target: top-1 within 0.5 points of the baseline.
- ``recipes/separable_fmnist.yaml`` (issue 5): every eligible 3x3 conv rewritten depthwise-separable with ``T``
  per layer from a weight-error budget, BN re-calibration (accuracy before any fine-tuning recorded),
  distillation fine-tune. Target: top-1 within 0.3 points; per-layer CPU latency of each rewritten layer next
  to the dense one.

Each recipe runs through ``python -m compress.run`` (the baseline is the default recipe's cached one). The
figures are read back from the run's ``report.json``; ``benchmarks/results/<recipe>.json`` keeps them and
``benchmarks/results/<recipe>.md`` copies the report's tables.

    python benchmarks/recovery.py                       # both recipes, as written (long: tens of minutes)
    python benchmarks/recovery.py --recipes separable_fmnist --set steps.2.finetune.epochs=1
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, command_line, context, md_table, run_isolated  # noqa: E402

__all__ = ["TARGETS", "figures", "report_tables", "main"]

TARGETS = {"prune50_fmnist": 0.5, "separable_fmnist": 0.3}  # allowed top-1 drop, in points


def _step_top1(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"step": s["name"], "top1": s["metrics"].get("top1"), "macs": s["metrics"].get("macs"),
             "params": s["metrics"].get("params")} for s in report["steps"]]


def _finetune(report: dict[str, Any]) -> dict[str, Any]:
    for s in report["steps"]:
        if s["kind"] == "finetune":
            d = s["details"]
            return {"epochs": d.get("epochs"), "steps": d.get("steps"), "seconds": d.get("seconds"),
                    "distill": d.get("distill")}
    return {}


def figures(name: str, report: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any]:
    """The issue's figures from a run's ``report.json`` (and its validated ``recipe.yaml`` data)."""
    base, final = report["baseline"]["top1"], report["final"]["top1"]
    steps = _step_top1(report)
    before_ft = [s["top1"] for s in steps if s["step"] == "calibrate"]
    drop = round(100 * (base - final), 2)
    out = {"recipe": f"recipes/{name}.yaml", "baseline_top1": base, "final_top1": final, "drop_points": drop,
           "target_points": TARGETS.get(name), "met": TARGETS.get(name) is not None and drop <= TARGETS[name],
           "top1_before_finetune": before_ft[0] if before_ft else None, "steps": steps,
           "finetune": _finetune(report),
           "macs_fraction": round(report["final"]["macs"] / report["baseline"]["macs"], 4),
           "params_fraction": round(report["final"]["params"] / report["baseline"]["params"], 4),
           "latency": [{k: r[k] for k in ("device", "batch", "threads", "baseline_ms", "compressed_ms", "ratio",
                                          "verdict")} for r in report["latency"]],
           "train_size": report["data"]["sizes"].get("train"), "test_size": report["data"]["sizes"].get("test"),
           "steps_config": recipe.get("steps")}
    rewritten = {r["layer"] for r in report.get("rewrites", []) if r.get("macs_after") is not None}
    if rewritten:
        out["rewritten_layers"] = [{k: row[k] for k in ("name", "macs_before", "macs_after", "ms_before", "ms_after")}
                                   for row in report["layers"] if row["name"] in rewritten]
        timing = report.get("layers_timing") or {}
        out["layers_timing"] = timing
    return out


def _section(markdown: str, title: str) -> str:
    """One ``## title`` section of a report.md, without its heading ('' when absent)."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, flags=re.S | re.M)
    return match.group(1).strip() if match else ""


def report_tables(name: str, fig: dict[str, Any], markdown: str, command: str, date: str) -> str:
    """``benchmarks/results/<name>.md``: the figures plus the report's Summary, Steps and Latency tables."""
    lines = [f"# {name}: measured recovery", "", f"- command: `{command}`", f"- date: {date}",
             f"- baseline top-1 {100 * fig['baseline_top1']:.2f}%, final {100 * fig['final_top1']:.2f}% "
             f"(change {-fig['drop_points']:+.2f} points; allowed drop <= {fig['target_points']} -> "
             f"{'MET' if fig['met'] else 'NOT MET'}), fine-tune {fig['finetune'].get('epochs')} epoch(s) on "
             f"{fig['train_size']} images", ""]
    for title in ("Summary", "Steps (accuracy after each)", "Latency"):
        lines += [f"## {title}", "", _section(markdown, title), ""]
    if fig.get("rewritten_layers"):
        t = fig.get("layers_timing") or {}
        rows = [[r["name"], f"{r['macs_before']:,}", f"{r['macs_after']:,}", _ms(r["ms_before"]), _ms(r["ms_after"]),
                 _ratio(r["ms_before"], r["ms_after"])] for r in fig["rewritten_layers"]]
        lines += ["## Rewritten layers: dense vs separable, per-layer CPU latency", "",
                  f"Per-layer medians with forward hooks on {t.get('device')} {t.get('dtype')} batch {t.get('batch')}"
                  f" ({t.get('runs')} runs; hook overhead included), from the report's per-layer table.", "",
                  md_table(["layer", "MACs dense", "MACs separable", "ms dense", "ms separable",
                            "dense/separable"], rows), ""]
    return "\n".join(lines)


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.4f}"


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "—"
    return f"{a / b:.2f}x faster" if a >= b else f"SLOWER {b / a:.2f}x"


_CONTEXT_KEYS = ("command", "date", "machine", "versions", "seconds")


def run_one(name: str, overrides: list[str], out_root: Path, timeout: float, *, rerun: bool = True) -> dict[str, Any]:
    """Run ``recipes/<name>.yaml`` and write its figures and tables into ``benchmarks/results``.

    ``rerun=False`` only re-reads the finished run folder (e.g. after a change to this script's tables) and
    keeps the command, date and machine recorded when it ran.
    """
    import yaml

    from compress.io import atomic_write_json, atomic_write_text

    out = out_root / name
    shown = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    args = ["-m", "compress.run", f"recipes/{name}.yaml", "--out", str(shown), "--force", "--quiet"]
    for item in overrides:
        args += ["--set", item]
    if rerun:
        ctx = context("python " + " ".join(args))
        done = run_isolated(args, timeout=timeout)
        if done.status != "ok":
            return {"recipe": name, "status": done.status, "stderr": done.stderr, **ctx}
        ctx["seconds"] = round(done.seconds, 1)
    else:
        saved = json.loads((RESULTS / f"{name}.json").read_text())
        ctx = {k: saved[k] for k in _CONTEXT_KEYS if k in saved}
    command = ctx["command"]
    report = json.loads((out / "report.json").read_text())
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    fig = {**figures(name, report, recipe), **ctx, "status": "ok"}
    atomic_write_json(RESULTS / f"{name}.json", fig)
    atomic_write_text(RESULTS / f"{name}.md",
                      report_tables(name, fig, (out / "report.md").read_text(), command, fig["date"]))
    return fig


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    p.add_argument("--set", action="append", default=[], help="recipe override passed to compress.run")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench"),
                   help="parent of the run folders (relative paths: from the repository root)")
    p.add_argument("--timeout", type=float, default=4 * 3600.0)
    p.add_argument("--no-run", action="store_true",
                   help="only rebuild benchmarks/results/<recipe>.json/.md from the finished run folders")
    args = p.parse_args(argv)
    began = time.perf_counter()
    out = Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out
    results = [run_one(n, args.set, out, args.timeout, rerun=not args.no_run) for n in args.recipes]
    print(json.dumps({"section": "recovery", "command": command_line("benchmarks/recovery.py", argv),
                      "seconds": round(time.perf_counter() - began, 1), "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
