"""Zero-shot recovery after pruning (issue 17): BN re-calibration vs layer-wise least-squares reconstruction.

The baseline is the default recipe's Fashion-MNIST ``compress:small_resnet`` (widths [16, 32, 64]; trained once
and cached, shared with ``python -m compress.run`` and ``benchmarks/quality.py``). For each MACs budget
(default 50% and 25%) a copy is pruned with ``compress.prune`` (l2 importance, as the recipes do), then, with no
gradient step at all:

- ``prune``: nothing else;
- ``prune + BN recal``: :func:`compress.calibrate_bn` on the calibration split;
- ``prune + reconstruct``: :func:`compress.reconstruct` towards the baseline on the calibration split;
- ``prune + reconstruct + BN recal``: both, in that order.

Top-1 on the test set (``--quick``: its first 2,000 images). Prints a Markdown table and the command, and writes
them to ``benchmarks/results/zero_shot.md`` (``--out``).

    python benchmarks/zero_shot.py --quick
    python benchmarks/zero_shot.py --targets 0.5 0.25
"""
from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, command_line, context, context_lines, md_table  # noqa: E402
from quality import load_setup  # noqa: E402  (puts the repository root on sys.path)

from methods import ours_prune  # noqa: E402

__all__ = ["METHODS", "run", "main"]

LOG = logging.getLogger("zero_shot")

METHODS = ("prune", "prune + BN recal", "prune + reconstruct", "prune + reconstruct + BN recal")
QUICK_IMAGES = 2000


def _top1(model: torch.nn.Module, loader: Any) -> float:
    from compress.measurement import evaluate

    return evaluate(model, loader, verbose=False).top1


def _variants(pruned: torch.nn.Module, baseline: torch.nn.Module, calib: Any, *, bn_batches: int,
              verbose: bool) -> dict[str, tuple[torch.nn.Module, float, dict[str, Any]]]:
    """``{method: (model, seconds, details)}`` for every method of :data:`METHODS` from one pruned model."""
    from compress.training.calibrate import calibrate_bn
    from compress.transforms.reconstruct import reconstruct

    out: dict[str, tuple[torch.nn.Module, float, dict[str, Any]]] = {"prune": (pruned, 0.0, {})}
    start = time.perf_counter()
    recal = copy.deepcopy(pruned)
    calibrate_bn(recal, calib, max_batches=bn_batches)
    out["prune + BN recal"] = (recal, time.perf_counter() - start, {})
    start = time.perf_counter()
    rebuilt = copy.deepcopy(pruned)
    records = reconstruct(rebuilt, baseline, calib, verbose=verbose)
    seconds = time.perf_counter() - start
    fitted = [r for r in records if r.status == "fitted"]
    details = {"fitted": len(fitted), "layers": len(records),
               "not_fitted": {r.layer: r.reason for r in records if r.status != "fitted"},
               "mean_error_before": sum(r.error_before for r in fitted) / max(len(fitted), 1),
               "mean_error_after": sum(r.error_after for r in fitted) / max(len(fitted), 1)}
    out["prune + reconstruct"] = (rebuilt, seconds, details)
    start = time.perf_counter()
    both = copy.deepcopy(rebuilt)
    calibrate_bn(both, calib, max_batches=bn_batches)
    out["prune + reconstruct + BN recal"] = (both, seconds + time.perf_counter() - start, details)
    return out


def run(*, targets: list[float], quick: bool, bn_batches: int, verbose: bool) -> tuple[list[list[Any]], dict]:
    """Rows of the table (target, method, top-1, MACs fraction, seconds, layer errors) and facts about the run."""
    from compress.transforms.prune.pruner import count_macs_params

    setup = load_setup("small_resnet", stage_images=QUICK_IMAGES if quick else None, verbose=verbose)
    test, calib, baseline = setup.stage_test, setup.data.calib, setup.baseline
    base_top1 = _top1(baseline, test)
    macs0 = count_macs_params(baseline, setup.example)[0]
    rows: list[list[Any]] = [["1.00", "baseline", f"{100 * base_top1:.2f}%", "1.000", "—", "—"]]
    for target in targets:
        pruned, _ = ours_prune(baseline, setup.example, target, importance="l2")
        fraction = count_macs_params(pruned, setup.example)[0] / macs0
        for method, (model, seconds, details) in _variants(pruned, baseline, calib, bn_batches=bn_batches,
                                                           verbose=verbose).items():
            top1 = _top1(model, test)
            errors = (f"{details['mean_error_before']:.3f} -> {details['mean_error_after']:.3f} "
                      f"({details['fitted']}/{details['layers']} fitted)") if details else "—"
            rows.append([f"{target:.2f}", method, f"{100 * top1:.2f}%", f"{fraction:.3f}",
                         f"{seconds:.1f}" if seconds else "—", errors])
            LOG.info("%s %s: top-1 %.4f (%s)", target, method, top1, details.get("not_fitted") or "")
    facts = {"test_images": len(test.dataset), "calib_images": len(calib.dataset), "baseline": setup.origin["source"]}
    return rows, facts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.25], help="MACs fractions to prune to")
    p.add_argument("--quick", action="store_true", help=f"top-1 on the first {QUICK_IMAGES} test images")
    p.add_argument("--bn-batches", type=int, default=16, help="calibration batches for BN re-calibration")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--out", default=str(RESULTS / "zero_shot.md"), help="where the Markdown goes")
    p.add_argument("--verbose", action="store_true", help="progress bars and per-method log lines")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    torch.set_num_threads(args.threads)
    command = command_line("benchmarks/zero_shot.py", argv)
    ctx = context(command)
    began = time.perf_counter()
    rows, facts = run(targets=args.targets, quick=args.quick, bn_batches=args.bn_batches, verbose=args.verbose)
    table = md_table(["MACs target", "method", "top-1", "MACs after", "seconds", "layer error before -> after"],
                     rows)
    text = "\n".join(["# Zero-shot recovery after pruning: BN re-calibration vs least-squares reconstruction", "",
                      *context_lines(ctx, seconds=time.perf_counter() - began),
                      f"- data: Fashion-MNIST, top-1 on {facts['test_images']} test images; "
                      f"{facts['calib_images']} calibration images (train split, held in); baseline from "
                      f"{facts['baseline']}; no gradient steps after pruning", "",
                      table, "",
                      "Layer errors: mean relative output error of the fitted layers on the sampled calibration "
                      "rows, before -> after their fit.", "", f"Reproduce: `{command}`", ""])
    from compress.io import atomic_write_text

    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
