"""Run every benchmark section and rewrite ``benchmarks/RESULTS.md`` from what this run measured.

Sections (each in its own subprocess; each records its command, date, machine, load and versions):

1. quality at equal MACs budget on the Fashion-MNIST baselines (``benchmarks/quality.py``);
2. measured recovery of ``recipes/prune50_fmnist.yaml`` (issue 6) and ``recipes/separable_fmnist.yaml``
   (issue 5) (``benchmarks/recovery.py``; long, so rerun only with ``--recovery``; otherwise the figures of the
   last recovery run are included with their own date and command);
3. coverage of torchvision's classification models (``benchmarks/coverage.py``);
4. analysis overhead and memory (``benchmarks/analysis_overhead.py --quick --threads 1``, output verbatim);
5. latency efficiency = measured speed-up / MAC reduction: from section 1's CPU timings, from
   ``benchmarks/gpu_latency.py`` run on this CPU, and from the committed H200 table
   (``benchmarks/results/gpu/gpu_latency.md``, measured in an earlier run by ``benchmarks/gpu_session.sh``);
6. zero-shot recovery: top-1 with no gradient step after pruning, plans and rewrites, then after 1 and 2
   fine-tune epochs (``benchmarks/zero_shot.py``; long, so rerun only with ``--zero-shot``; otherwise each model's
   stored rows from ``benchmarks/results/zero_shot.json``, with the command and date of the run that measured them).

    python benchmarks/run.py --quick        # subsets; < 15 min on 2 CPU cores with cached baselines
    python benchmarks/run.py                # full: every torchvision model, full fine-tune data (hours on CPU)
    python benchmarks/run.py --quick --recovery
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, command_line, context, context_lines, run_isolated  # noqa: E402
from quality import MODELS  # noqa: E402
from render import (coverage_section, efficiency_section, overhead_section, quality_section,  # noqa: E402
                    recovery_section, zero_shot_section)

__all__ = ["main"]

OUT = ROOT / "benchmarks" / "RESULTS.md"
# The small MobileNet takes minutes per 10,000-image evaluation on a loaded 2-core CPU: quick runs measure the
# ResNet only and show the MobileNet's last saved result (`python benchmarks/quality.py --quick --models
# small_mobilenet_v2`), marked with its own date.
QUICK_MODELS = ["small_resnet"]


def _section(name: str, args: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one benchmark script; its JSON (last stdout line) plus status, wall time and raw output."""
    print(f"[run.py] {name}: python {' '.join(args)}", file=sys.stderr, flush=True)
    done = run_isolated(args, timeout=timeout, env=env)
    print(f"[run.py] {name}: {done.status} in {done.seconds:.0f} s", file=sys.stderr, flush=True)
    return {"status": done.status, "seconds": done.seconds, "data": done.data, "stdout": done.stdout,
            "stderr": done.stderr}


def _gpu_latency_cpu(quick: bool) -> dict[str, Any]:
    """``gpu_latency.py`` on this CPU (1 thread): the same variants as the committed H200 table."""
    size, batch, runs = ("112", "1", "20") if quick else ("224", "8", "30")
    args = ["benchmarks/gpu_latency.py", "--device", "cpu", "--dtype", "float32", "--batch", batch, "--size", size,
            "--runs", runs]
    ctx = context("OMP_NUM_THREADS=1 " + command_line(args[0], args[1:]))
    result = _section("latency (gpu_latency.py on cpu)", args, timeout=900, env={"OMP_NUM_THREADS": "1"})
    return {**result, "context": ctx}


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="subsets everywhere (see each section)")
    p.add_argument("--recovery", action="store_true", help="also rerun the issue 5/6 recipes (tens of minutes)")
    p.add_argument("--zero-shot", action="store_true",
                   help="also rerun benchmarks/zero_shot.py (section 6; about an hour in full, minutes with --quick)")
    p.add_argument("--skip", nargs="*", default=[], choices=["quality", "coverage", "overhead", "latency"],
                   help="sections not to rerun (their last saved results are shown, marked as such)")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    quick = ["--quick"] if args.quick else []
    began = time.perf_counter()
    head = context(command_line("benchmarks/run.py", argv))
    runs: dict[str, Any] = {}
    quality_models = QUICK_MODELS if args.quick else list(MODELS)
    if "quality" not in args.skip:
        runs["quality"] = _section("quality", ["benchmarks/quality.py", *quick, "--models", *quality_models],
                                   timeout=4 * 3600)
    if "coverage" not in args.skip:
        runs["coverage"] = _section("coverage", ["benchmarks/coverage.py", *quick], timeout=12 * 3600)
    if "overhead" not in args.skip:
        # one thread: on a shared 2-core machine a second thread that loses its core makes timings erratic
        overhead_args = ["benchmarks/analysis_overhead.py", "--quick", "--threads", "1"]
        ctx = context(command_line(overhead_args[0], overhead_args[1:]))  # load average before it runs
        runs["overhead"] = {**_section("analysis overhead", overhead_args, timeout=900), "context": ctx}
    if "latency" not in args.skip:
        runs["latency"] = _gpu_latency_cpu(args.quick)
    if args.recovery:
        runs["recovery"] = _section("recovery", ["benchmarks/recovery.py"], timeout=6 * 3600)
    if args.zero_shot:
        runs["zero_shot"] = _section("zero-shot", ["benchmarks/zero_shot.py", *quick], timeout=6 * 3600)
    quality = [doc for key in MODELS if (doc := _load(RESULTS / f"quality_{key}.json")) is not None]
    coverage = _load(RESULTS / "coverage.json")
    recovery = {name: _load(RESULTS / f"{name}.json") for name in ("prune50_fmnist", "separable_fmnist")}
    total = time.perf_counter() - began
    parts = [
        "# Benchmark results",
        "",
        "Rewritten by `benchmarks/run.py` from the figures it measured; every section names its own command, date,",
        "machine (CPU model, load average at the start) and versions. Latencies are medians of runs timed",
        "interleaved in one process (the first model is the reference); ratios above 1 are speed-ups.",
        "",
        *context_lines(head, seconds=total),
        f"- mode: {'quick (subsets, see each section)' if args.quick else 'full'}",
        "",
        quality_section(quality, runs.get("quality"), rerun=quality_models if "quality" in runs else []),
        recovery_section(recovery, rerun="recovery" in runs),
        coverage_section(coverage, runs.get("coverage"), rerun="coverage" in runs,
                         full=_load(RESULTS / "coverage_full" / "coverage.json")),
        overhead_section(runs.get("overhead")),
        efficiency_section(quality, runs.get("latency"), ROOT / "benchmarks" / "results" / "gpu" / "gpu_latency.md"),
        zero_shot_section(_load(RESULTS / "zero_shot.json"), runs.get("zero_shot")),
    ]
    text = "\n".join(parts).rstrip() + "\n"
    from compress.io import atomic_write_text

    atomic_write_text(Path(args.out), text)
    print(f"[run.py] wrote {args.out} in {total:.0f} s ({datetime.timedelta(seconds=round(total))})",
          file=sys.stderr)
    return 0 if all(r.get("status") == "ok" for r in runs.values()) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
