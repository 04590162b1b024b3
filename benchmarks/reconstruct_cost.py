"""Benchmark: what least-squares reconstruction costs against a fine-tune epoch, and whether its memory stays flat.

Issue 17 asks that reconstructing the small ResNet takes less time than one fine-tune epoch and that its peak
memory does not grow with the number of calibration batches (the normal equations are accumulated, never the
activations). For the default recipe's cached small ResNet pruned to half its MACs (``compress.prune``, l2),
each measurement runs in its own subprocess (peak RSS, ``ru_maxrss``, is per process) at the same thread count:

- ``reconstruct`` on K calibration batches of 128 images (the calibration split, cycled), for each K of
  ``--batches``: seconds, the process' RSS just before the call and its peak RSS during the call (the peak count
  restarted just before it, Linux ``/proc/self/clear_refs``), so their difference is what the call added on top
  of the batches it was handed;
- one epoch of the distillation fine-tune the default recipe runs (55,000 images, batch 128, teacher = the
  original): seconds.

Usage::

    python benchmarks/reconstruct_cost.py                   # writes benchmarks/results/reconstruct_cost.md
    python benchmarks/reconstruct_cost.py --batches 2 8 32 --threads 1
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import RESULTS, command_line, context, context_lines, md_table, run_isolated  # noqa: E402

MACS_TARGET = 0.5


def _status_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last :func:`_reset_peak`) of this process, in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    """Restart the peak-RSS count (``VmHWM``) at the current RSS: Linux's ``clear_refs`` value 5."""
    Path("/proc/self/clear_refs").write_text("5")


def _setup() -> tuple[Any, Any, Any]:
    """``(pruned copy, baseline, data)`` of the default recipe's small ResNet."""
    import copy

    from quality import load_setup

    from compress import prune

    setup = load_setup("small_resnet")
    pruned = copy.deepcopy(setup.baseline)
    prune(pruned, setup.example, macs_target=MACS_TARGET, importance="l2")
    return pruned, setup.baseline, setup.data


def child(what: str, batches: int, threads: int) -> dict[str, Any]:
    """One measurement in this (fresh) process."""
    import itertools

    import torch

    torch.set_num_threads(threads)
    pruned, baseline, data = _setup()
    if what == "reconstruct":
        from compress.transforms.reconstruct import reconstruct

        calib = [x for x, *_ in itertools.islice(itertools.cycle(data.calib), batches)]
        del data  # the splits' tensors are not the call's memory
        import gc

        gc.collect()
        _reset_peak()
        before = _status_mib("VmRSS")
        start = time.perf_counter()
        records = reconstruct(pruned, baseline, calib, verbose=False)
        return {"what": what, "batches": batches, "images": sum(len(x) for x in calib),
                "seconds": round(time.perf_counter() - start, 2), "peak_mib_before": round(before, 1),
                "peak_mib": round(_status_mib("VmHWM"), 1), "fitted": sum(r.status == "fitted" for r in records)}
    from compress.training import DistillConfig, Teacher, TrainConfig, fit

    for p in pruned.parameters():
        p.requires_grad_(True)
    start = time.perf_counter()
    fit(pruned, data.train, config=TrainConfig(epochs=1, lr=0.05, warmup_epochs=0.1), device="cpu",
        teacher=Teacher(baseline, DistillConfig(alpha=0.7, temperature=4)), seed=0, verbose=False)
    return {"what": what, "images": len(data.train.dataset), "seconds": round(time.perf_counter() - start, 2),
            "peak_mib": round(_status_mib("VmHWM"), 1)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[2, 8, 32, 64], help="calibration batches (of 128)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "reconstruct_cost.md"))
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # internal: WHAT BATCHES
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.threads)))
        return 0
    from compress.io import atomic_write_text

    command = command_line("benchmarks/reconstruct_cost.py", argv)
    ctx = context(command)
    began = time.perf_counter()
    rows = []
    for what, batches in [("reconstruct", b) for b in args.batches] + [("finetune", 0)]:
        done = run_isolated([str(Path(__file__).resolve()), "--threads", str(args.threads), "--child", what,
                             str(batches)], timeout=1800)
        if done.status != "ok" or done.data is None:
            rows.append({"what": what, "batches": batches, "failed": f"{done.status}: {done.stderr[-400:]}"})
        else:
            rows.append(done.data)
        print(json.dumps(rows[-1]), flush=True)
    ok = [r for r in rows if "failed" not in r]
    epoch = next((r["seconds"] for r in ok if r["what"] == "finetune"), None)
    recon = [r for r in ok if r["what"] == "reconstruct"]
    table = md_table(("measurement", "calibration images", "seconds", "RSS before (MiB)", "peak RSS (MiB)",
                      "layers fitted"),
                     [[r["what"] + (f" ({r['batches']} batches)" if r["what"] == "reconstruct" else " (1 epoch)"),
                       r["images"], r["seconds"], r.get("peak_mib_before", "—"), r["peak_mib"],
                       r.get("fitted", "—")] for r in ok]
                     + [[r["what"], "—", "FAILED", "—", "—", r["failed"]] for r in rows if "failed" in r])
    verdicts = []
    if epoch is not None and recon:
        slowest = max(recon, key=lambda r: r["seconds"])
        verdicts.append(f"reconstruction on {slowest['images']} images: {slowest['seconds']} s, one fine-tune epoch: "
                        f"{epoch} s: " + ("LESS than an epoch" if slowest["seconds"] < epoch else
                                          "NOT less than an epoch"))
    if len(recon) >= 2:
        verdicts.append("peak RSS during the call, and what it added to the RSS just before it, by calibration "
                        "batches: " + ", ".join(f"{r['batches']}: {r['peak_mib']} MiB "
                                                f"(+{r['peak_mib'] - r['peak_mib_before']:.1f})" for r in recon)
                        + " (the RSS before differs from run to run with what the allocator returned to the system "
                          "after loading: compare both columns, and reruns)")
    text = ["# Reconstruction cost: time against a fine-tune epoch, memory against calibration batches (issue 17)",
            "", __doc__.split("\n\n")[1], "", *context_lines(ctx, seconds=time.perf_counter() - began),
            f"- threads: {args.threads}; model: the default recipe's small ResNet, pruned to {MACS_TARGET} of its MACs",
            "", table, "", *[f"- {v}" for v in verdicts], ""]
    atomic_write_text(args.out, "\n".join(text))
    print("\n".join(verdicts))
    return 0 if not [r for r in rows if "failed" in r] else 1


if __name__ == "__main__":
    raise SystemExit(main())
