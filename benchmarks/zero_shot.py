"""Zero-shot recovery after pruning or rewriting (issue 17): BN re-calibration vs least-squares reconstruction.

The baselines are the Fashion-MNIST models of ``benchmarks/quality.py``: the default recipe's
``compress:small_resnet`` (widths [16, 32, 64]) and ``recipes/mobilenet_fmnist.yaml``'s small MobileNetV2 (width
0.5), each trained once and cached, shared with ``python -m compress.run``. Each model is transformed by

- pruning to each MACs budget (default 50% and 25%) with ``compress.prune``, once per importance of
  ``--importances`` (default ``l2``, as the recipes do, and ``reconstruction``: channels ranked by what a
  least-squares refit of their consumers cannot rebuild, from an analysis of the calibration split);
- the data-aware ``separable`` rewrite with ``macs_target`` (default 0.6 of the model's MACs; T per layer);
- the ``grouped`` rewrite with ``groups: 2`` (co-clustered channels, permutes absorbed where exact);

and then, with no gradient step at all, recovered by

- ``none``: nothing else;
- ``BN recal``: :func:`compress.calibrate_bn` on the calibration split;
- ``reconstruct``: :func:`compress.reconstruct` towards the baseline on the calibration split;
- ``reconstruct + BN recal``: both, in that order.

Top-1 on the test set (``--quick``: its first 2,000 images). A transform that changes nothing (no eligible conv,
e.g. separable on MobileNetV2, whose 3x3 convs are depthwise already) is listed in a note instead of the table.
Prints a Markdown table and the command, and writes them to ``benchmarks/results/zero_shot.md`` (``--out``).

    python benchmarks/zero_shot.py --quick
    python benchmarks/zero_shot.py --models small_resnet small_mobilenet_v2 --targets 0.5 0.25
    python benchmarks/zero_shot.py --quick-baseline small_mobilenet_v2   # its baseline: 1 epoch on 10k images
"""
from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, command_line, context, context_lines, md_table  # noqa: E402
from quality import MODELS, load_setup  # noqa: E402  (puts the repository root on sys.path)

from methods import ours_prune, ours_rewrite  # noqa: E402

__all__ = ["METHODS", "transforms", "run", "main"]

LOG = logging.getLogger("zero_shot")

METHODS = ("none", "BN recal", "reconstruct", "reconstruct + BN recal")
QUICK_IMAGES = 2000
# --quick-baseline MODEL: that model's baseline trained briefly (its own cache entry), where the recipe's full
# training does not fit the time at hand; the table says so.
QUICK_BASELINE = ("data.train_subset=10000", "baseline.train.epochs=1")


def _top1(model: torch.nn.Module, loader: Any) -> float:
    from compress.measurement import evaluate

    return evaluate(model, loader, verbose=False).top1


def _variants(transformed: torch.nn.Module, baseline: torch.nn.Module, calib: Any, *, bn_batches: int,
              verbose: bool) -> dict[str, tuple[torch.nn.Module, float, dict[str, Any]]]:
    """``{method: (model, seconds, reconstruction summary)}`` for every method of :data:`METHODS`."""
    from compress.training.calibrate import calibrate_bn
    from compress.transforms.reconstruct import reconstruct
    from compress.transforms.reconstruct.step import summary

    out: dict[str, tuple[torch.nn.Module, float, dict[str, Any]]] = {"none": (transformed, 0.0, {})}
    start = time.perf_counter()
    recal = copy.deepcopy(transformed)
    calibrate_bn(recal, calib, max_batches=bn_batches)
    out["BN recal"] = (recal, time.perf_counter() - start, {})
    start = time.perf_counter()
    rebuilt = copy.deepcopy(transformed)
    details = summary(reconstruct(rebuilt, baseline, calib, verbose=verbose))
    seconds = time.perf_counter() - start
    out["reconstruct"] = (rebuilt, seconds, details)
    start = time.perf_counter()
    both = copy.deepcopy(rebuilt)
    calibrate_bn(both, calib, max_batches=bn_batches)
    out["reconstruct + BN recal"] = (both, seconds + time.perf_counter() - start, details)
    return out


def transforms(setup: Any, *, targets: list[float], separable: float, groups: int,
               importances: tuple[str, ...] = ("l2",),
               rewrites: bool = True) -> Iterator[tuple[str, torch.nn.Module | None]]:
    """``(label, transformed copy of the baseline)``; ``None`` when the transform changed no layer."""
    from compress.analysis import analyze
    from compress.transforms.prune.config import NEEDS_ANALYSIS
    from compress.transforms.rewrite.apply import rewrite

    images = [x for x, *_ in setup.data.calib]
    analysis = (analyze(setup.baseline, images, verbose=False) if set(importances) & set(NEEDS_ANALYSIS)
                else None)
    for target in targets:
        for importance in importances:
            label = f"prune to {target:.2f} MACs" + ("" if importance == "l2" else f", {importance} importance")
            yield label, ours_prune(setup.baseline, setup.example, target, importance=importance,
                                    analysis=analysis)[0]
    if not rewrites:
        return
    sep, facts = ours_rewrite(setup.baseline, setup.example, separable, kind="separable", calib=images,
                              probe=images[0])
    yield f"separable, macs_target {separable:.2f}", sep if facts.get("rewritten") else None
    grouped = copy.deepcopy(setup.baseline)
    records = rewrite(grouped, "grouped", example_inputs=setup.example, groups=groups)
    yield f"grouped, groups {groups}", grouped if any(r.skipped is None for r in records) else None


def _errors(details: dict[str, Any]) -> str:
    if not details:
        return "—"
    if not details["fitted"]:
        return f"0/{details['layers']} fitted"
    return (f"{details['mean_error_before']:.3f} -> {details['mean_error_after']:.3f} "
            f"({details['fitted']}/{details['layers']} fitted)")


def run(*, models: list[str], targets: list[float], separable: float, groups: int, quick: bool, bn_batches: int,
        verbose: bool, quick_baselines: tuple[str, ...] = (), importances: tuple[str, ...] = ("l2",),
        rewrites: bool = True) -> tuple[list[list[Any]], dict]:
    """Rows of the table (model, transform, recovery, top-1, MACs fraction, seconds, layer errors) and facts."""
    from compress.transforms.prune.pruner import count_macs_params

    rows: list[list[Any]] = []
    facts: dict[str, Any] = {"baseline": {}, "unchanged": []}
    for key in models:
        overrides = QUICK_BASELINE if key in quick_baselines else ()
        setup = load_setup(key, stage_images=QUICK_IMAGES if quick else None, verbose=verbose, overrides=overrides)
        test, calib, baseline = setup.stage_test, setup.data.calib, setup.baseline
        macs0 = count_macs_params(baseline, setup.example)[0]
        rows.append([key, "baseline", "—", f"{100 * _top1(baseline, test):.2f}%", "1.000", "—", "—"])
        facts.update(test_images=len(test.dataset), calib_images=len(calib.dataset))
        facts["baseline"][key] = setup.origin["source"] + (f" (quick: {', '.join(overrides)})" if overrides else "")
        for label, transformed in transforms(setup, targets=targets, separable=separable, groups=groups,
                                             importances=importances, rewrites=rewrites):
            if transformed is None:
                facts["unchanged"].append(f"{key}: {label}")
                continue
            fraction = count_macs_params(transformed, setup.example)[0] / macs0
            for method, (model, seconds, details) in _variants(transformed, baseline, calib, bn_batches=bn_batches,
                                                               verbose=verbose).items():
                top1 = _top1(model, test)
                rows.append([key, label, method, f"{100 * top1:.2f}%", f"{fraction:.3f}",
                             f"{seconds:.1f}" if seconds else "—", _errors(details)])
                LOG.info("%s %s %s: top-1 %.4f (%s)", key, label, method, top1, details.get("not_fitted") or "")
    return rows, facts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="baselines")
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.25], help="MACs fractions to prune to")
    p.add_argument("--importances", nargs="+", default=["l2", "reconstruction"],
                   help="pruning importances, one pruned model per importance and target")
    p.add_argument("--no-rewrites", dest="rewrites", action="store_false", help="pruning rows only")
    p.add_argument("--separable", type=float, default=0.6, help="macs_target of the separable rewrite")
    p.add_argument("--groups", type=int, default=2, help="groups of the grouped rewrite")
    p.add_argument("--quick", action="store_true", help=f"top-1 on the first {QUICK_IMAGES} test images")
    p.add_argument("--quick-baseline", nargs="+", default=[], choices=list(MODELS), metavar="MODEL",
                   help=f"train these baselines with {' '.join(QUICK_BASELINE)} instead of their recipe's schedule")
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
    rows, facts = run(models=args.models, targets=args.targets, separable=args.separable, groups=args.groups,
                      quick=args.quick, bn_batches=args.bn_batches, verbose=args.verbose,
                      quick_baselines=tuple(args.quick_baseline), importances=tuple(args.importances),
                      rewrites=args.rewrites)
    table = md_table(["model", "transform", "recovery", "top-1", "MACs after", "seconds",
                      "layer error before -> after"], rows)
    origins = ", ".join(f"{k} from {v}" for k, v in facts["baseline"].items())
    unchanged = [f"Not in the table (the transform changed no layer): {'; '.join(facts['unchanged'])}.", ""] \
        if facts["unchanged"] else []
    text = "\n".join(["# Zero-shot recovery after pruning or rewriting: BN re-calibration vs least-squares "
                      "reconstruction", "",
                      *context_lines(ctx, seconds=time.perf_counter() - began),
                      f"- data: Fashion-MNIST, top-1 on {facts['test_images']} test images; "
                      f"{facts['calib_images']} calibration images (train split, held in); baselines: {origins}; "
                      "no gradient steps after the transform", "",
                      table, "", *unchanged,
                      "Layer errors: mean relative output error of the fitted layers on the sampled calibration "
                      "rows, before -> after their fit.", "", f"Reproduce: `{command}`", ""])
    from compress.io import atomic_write_text

    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
