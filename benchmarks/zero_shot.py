"""Zero-shot recovery after pruning or rewriting (issue 17): BN re-calibration vs least-squares reconstruction.

The baselines are the Fashion-MNIST models of ``benchmarks/quality.py``: the default recipe's
``compress:small_resnet`` (widths [16, 32, 64]) and ``recipes/mobilenet_fmnist.yaml``'s small MobileNetV2 (width
0.5), each trained once and cached, shared with ``python -m compress.run``. Each model is transformed by

- torch-pruning's own ``MagnitudePruner`` (L2, uniform ratio bisected to each MACs budget; ``--no-tp`` drops it);
- pruning to each MACs budget (default 50% and 25%) with ``compress.prune``, once per importance of
  ``--importances`` (default ``l2``, as the recipes do, and ``reconstruction``: channels ranked by what a
  least-squares refit of their consumers cannot rebuild, from an analysis of the calibration split);
- the latency plans of ``recipes/plan_cpu.yaml`` (its ``plan`` step at each batch of ``--plan-batches``, default 64
  and 1, measured with ``--threads`` threads), for the model whose baseline that recipe shares;
- the data-aware ``separable`` rewrite with ``macs_target`` (default 0.6 of the model's MACs; T per layer);
- the ``grouped`` rewrite with ``groups: 2`` (co-clustered channels, permutes absorbed where exact);

and then, with no gradient step at all, recovered by

- ``none``: nothing else;
- ``BN recal``: :func:`compress.calibrate_bn` on the calibration split;
- ``reconstruct``: :func:`compress.reconstruct` towards the baseline on the calibration split;
- ``reconstruct + BN recal``: both, in that order.

Each row gives the seconds its recovery took. Then the pruned models and plans (not the rewrites), after
``BN recal`` and after ``reconstruct`` (``--finetune-recoveries``), are fine-tuned for each number of epochs of
``--finetune-epochs`` (default 1 and 2, each a run of its own from the zero-shot model: distillation from the
baseline, alpha 0.7, lr ``--lr``, on the whole train split), to see whether the head start lasts; those cells
give top-1 and the fine-tune's seconds.

Top-1 on the test set (``--quick``: its first 2,000 images). A transform that changes nothing (no eligible conv,
e.g. separable on MobileNetV2, whose 3x3 convs are depthwise already) is listed in a note instead of the table.
Each model's rows, with the command, date and load of the run that measured them, are stored in
``benchmarks/results/zero_shot.json`` (``--json``; a run replaces the entries of the models it ran, so the models
can be measured by separate runs) and the Markdown of every stored model is written to
``benchmarks/results/zero_shot.md`` (``--out``) and printed; ``benchmarks/run.py`` renders the same tables.

    python benchmarks/zero_shot.py --quick --finetune-epochs
    python benchmarks/zero_shot.py --models small_resnet
    python benchmarks/zero_shot.py --models small_mobilenet_v2 --no-tp --finetune-transforms "prune to 0.50 MACs"
"""
from __future__ import annotations

import argparse
import copy
import fcntl
import fnmatch
import itertools
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, command_line, context  # noqa: E402
from quality import MODELS, load_setup  # noqa: E402  (puts the repository root on sys.path)

from methods import ours_prune, ours_rewrite, tp_magnitude  # noqa: E402
from render import zero_shot_markdown  # noqa: E402

__all__ = ["METHODS", "Variant", "transforms", "plans", "finetune", "measure", "run_model", "store", "main"]

LOG = logging.getLogger("zero_shot")

METHODS = ("none", "BN recal", "reconstruct", "reconstruct + BN recal")
QUICK_IMAGES = 2000
PLAN_RECIPE = "recipes/plan_cpu.yaml"
# fine-tuned afterwards, unless --finetune-transforms says otherwise: pruning and plans (fnmatch on the label)
FINETUNE_TRANSFORMS = ("torch-pruning to *", "prune to * MACs", "latency plan *")
FINETUNE_RECOVERIES = ("BN recal", "reconstruct")
# --quick-baseline MODEL: that model's baseline trained briefly (its own cache entry), where the recipe's full
# training does not fit the time at hand; the table says so.
QUICK_BASELINE = ("data.train_subset=10000", "baseline.train.epochs=1")


@dataclass
class Variant:
    """One transformed copy of a baseline.

    Attributes:
        label: the table's "transform" cell.
        model: the transformed copy; ``None`` when the transform changed no layer.
        facts: what the transform reports of itself (ratio, plan verdict, ...), stored with the rows.
    """

    label: str
    model: nn.Module | None
    facts: dict[str, Any]


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
               importances: tuple[str, ...] = ("l2",), rewrites: bool = True, tp: bool = True) -> Iterator[Variant]:
    """Transformed copies of ``setup.baseline`` (which is never changed), in the table's order."""
    from compress.analysis import analyze
    from compress.transforms.prune.config import NEEDS_ANALYSIS
    from compress.transforms.rewrite.apply import rewrite

    images = [x for x, *_ in setup.data.calib]
    analysis = (analyze(setup.baseline, images, verbose=False) if set(importances) & set(NEEDS_ANALYSIS)
                else None)
    for target in targets:
        if tp:
            yield Variant(f"torch-pruning to {target:.2f} MACs", *tp_magnitude(setup.baseline, setup.example, target))
        for importance in importances:
            label = f"prune to {target:.2f} MACs" + ("" if importance == "l2" else f", {importance} importance")
            yield Variant(label, *ours_prune(setup.baseline, setup.example, target, importance=importance,
                                             analysis=analysis))
    if not rewrites:
        return
    sep, facts = ours_rewrite(setup.baseline, setup.example, separable, kind="separable", calib=images,
                              probe=images[0])
    yield Variant(f"separable, macs_target {separable:.2f}", sep if facts.get("rewritten") else None, facts)
    grouped = copy.deepcopy(setup.baseline)
    records = rewrite(grouped, "grouped", example_inputs=setup.example, groups=groups)
    done = sum(r.skipped is None for r in records)
    yield Variant(f"grouped, groups {groups}", grouped if done else None, {"rewritten": done})


def _plan_recipe(setup: Any, recipe_path: str) -> Any:
    """``recipe_path`` parsed, when its model/data/baseline are ``setup``'s (its plans start from that baseline);
    else ``None``."""
    from compress.baseline import baseline_cache_key
    from compress.recipe.schema import load_recipe

    recipe = load_recipe(str(Path(__file__).resolve().parents[1] / recipe_path))
    ours, theirs = (baseline_cache_key(r.model, r.data, r.baseline.train, r.seed) for r in (setup.recipe, recipe))
    return recipe if ours == theirs else None


def plans(setup: Any, recipe: Any, batches: list[int], *, verbose: bool = False) -> Iterator[Variant]:
    """The ``plan`` step of ``recipe`` (which shares ``setup``'s baseline) applied to a copy of ``setup.baseline``,
    once per batch size, measured with the current torch thread count."""
    from compress.planning import apply_plan, plan

    step = next(e.config for e in recipe.steps if e.name == "plan")
    calib = list(setup.data.calib)
    for batch in batches:
        result = plan(setup.baseline, setup.example, step.replace(batch=batch), calib=calib, verbose=verbose)
        model = copy.deepcopy(setup.baseline)
        for p in model.parameters():  # torch-pruning leaves frozen parameters unpruned
            p.requires_grad_(True)
        apply_plan(model, result, setup.example, calib=calib)
        facts = {"verdict": result.verdict, "measured_ratio": result.measured_ratio, "met": result.met,
                 "threads": torch.get_num_threads()}
        yield Variant(f"latency plan of {Path(PLAN_RECIPE).name}, batch {batch}", model.eval(), facts)


def finetune(model: nn.Module, setup: Any, *, epochs: int, lr: float, seed: int, loader: Any,
             verbose: bool) -> dict[str, float]:
    """Top-1 on ``loader`` and seconds of a distillation fine-tune of a copy of ``model`` (not changed)."""
    from compress.training import Teacher, TrainConfig, fit

    twin = copy.deepcopy(model)
    for p in twin.parameters():
        p.requires_grad_(True)
    start = time.perf_counter()
    fit(twin, setup.data.train, config=TrainConfig(epochs=epochs, lr=lr, warmup_epochs=0.1), device="cpu",
        teacher=Teacher(setup.baseline), seed=seed, verbose=verbose)
    seconds = time.perf_counter() - start
    return {"top1": _top1(twin.eval(), loader), "seconds": round(seconds, 1)}


def _tuned(label: str, method: str, transforms_: tuple[str, ...], recoveries: tuple[str, ...]) -> bool:
    return method in recoveries and any(fnmatch.fnmatchcase(label, pattern) for pattern in transforms_)


def run_model(key: str, args: argparse.Namespace) -> dict[str, Any]:
    """Load model ``key``'s baseline and data as ``compress.run`` does and :func:`measure` it."""
    overrides = QUICK_BASELINE if key in args.quick_baseline else ()
    setup = load_setup(key, stage_images=QUICK_IMAGES if args.quick else None, verbose=args.verbose,
                       overrides=overrides)
    entry = measure(setup, args)
    entry["baseline"] += f" (quick: {', '.join(overrides)})" if overrides else ""
    return entry


def measure(setup: Any, args: argparse.Namespace) -> dict[str, Any]:
    """One model's stored entry: its baseline, rows (transform, recovery, top-1, MACs fraction, seconds,
    reconstruction summary, fine-tunes) and the transforms that changed nothing.

    ``setup``: a :class:`quality.Setup` (baseline, example, data loaders, test loader, recipe, origin); ``args``: the
    options of :func:`main`.
    """
    from compress.transforms.prune.pruner import count_macs_params

    test, calib, baseline = setup.stage_test, setup.data.calib, setup.baseline
    macs0 = count_macs_params(baseline, setup.example)[0]
    entry: dict[str, Any] = {
        "baseline": setup.origin["source"],
        "baseline_top1": _top1(baseline, test), "test_images": len(test.dataset), "calib_images": len(calib.dataset),
        "finetune": {"epochs": args.finetune_epochs, "lr": args.lr, "train_images": len(setup.data.train.dataset)},
        "rows": [], "unchanged": [], "notes": []}
    variants = transforms(setup, targets=args.targets, separable=args.separable, groups=args.groups,
                          importances=tuple(args.importances), rewrites=args.rewrites, tp=args.tp)
    recipe = _plan_recipe(setup, PLAN_RECIPE) if args.plan_batches else None
    if recipe is not None:
        variants = itertools.chain(variants, plans(setup, recipe, args.plan_batches, verbose=args.verbose))
    elif args.plan_batches:
        entry["notes"].append(f"No plan rows: {PLAN_RECIPE} starts from another baseline (model, data or training).")
    for variant in variants:
        if variant.model is None:
            entry["unchanged"].append(variant.label)
            continue
        fraction = count_macs_params(variant.model, setup.example)[0] / macs0
        recovered = _variants(variant.model, baseline, calib, bn_batches=args.bn_batches, verbose=args.verbose)
        for method, (model, seconds, details) in recovered.items():
            row = {"transform": variant.label, "recovery": method, "top1": _top1(model, test),
                   "macs": round(fraction, 4), "seconds": round(seconds, 1), "reconstruction": details,
                   "facts": variant.facts, "finetune": {}}
            if _tuned(variant.label, method, tuple(args.finetune_transforms), tuple(args.finetune_recoveries)):
                for epochs in args.finetune_epochs:
                    row["finetune"][str(epochs)] = finetune(model, setup, epochs=epochs, lr=args.lr, seed=0,
                                                            loader=test, verbose=args.verbose)
            entry["rows"].append(row)
            LOG.info("%s %s %s: top-1 %.4f %s", setup.key, variant.label, method, row["top1"], row["finetune"])
    return entry


def store(path: Path, entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Merge ``entries`` (model key -> entry) into the JSON at ``path`` under a lock; returns the whole document."""
    from compress.io import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # separate runs per model may finish at once
        doc = json.loads(path.read_text()) if path.is_file() else {"models": {}}
        doc["models"].update(entries)
        atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return doc


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="baselines")
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.25], help="MACs fractions to prune to")
    p.add_argument("--importances", nargs="+", default=["l2", "reconstruction"],
                   help="pruning importances, one pruned model per importance and target")
    p.add_argument("--no-tp", dest="tp", action="store_false", help="no torch-pruning rows")
    p.add_argument("--no-rewrites", dest="rewrites", action="store_false", help="no rewrite rows")
    p.add_argument("--plan-batches", type=int, nargs="*", default=[64, 1],
                   help=f"batch sizes to plan {PLAN_RECIPE}'s latency target for (none: no plan rows)")
    p.add_argument("--separable", type=float, default=0.6, help="macs_target of the separable rewrite")
    p.add_argument("--groups", type=int, default=2, help="groups of the grouped rewrite")
    p.add_argument("--finetune-epochs", type=int, nargs="*", default=[1, 2],
                   help="fine-tune runs (epochs of each) after the zero-shot recovery (none: no fine-tunes)")
    p.add_argument("--finetune-transforms", nargs="+", default=list(FINETUNE_TRANSFORMS), metavar="PATTERN",
                   help="fnmatch patterns of the transforms fine-tuned")
    p.add_argument("--finetune-recoveries", nargs="+", default=list(FINETUNE_RECOVERIES), choices=METHODS,
                   help="the recoveries fine-tuned")
    p.add_argument("--lr", type=float, default=0.02, help="fine-tune learning rate")
    p.add_argument("--quick", action="store_true", help=f"top-1 on the first {QUICK_IMAGES} test images")
    p.add_argument("--quick-baseline", nargs="+", default=[], choices=list(MODELS), metavar="MODEL",
                   help=f"train these baselines with {' '.join(QUICK_BASELINE)} instead of their recipe's schedule")
    p.add_argument("--bn-batches", type=int, default=16, help="calibration batches for BN re-calibration")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--json", default=str(RESULTS / "zero_shot.json"), help="the stored rows, merged per model")
    p.add_argument("--out", default=str(RESULTS / "zero_shot.md"), help="where the Markdown goes")
    p.add_argument("--verbose", action="store_true", help="progress bars and per-method log lines")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    torch.set_num_threads(args.threads)
    ctx = context(command_line("benchmarks/zero_shot.py", argv))
    entries = {}
    for key in args.models:
        began = time.perf_counter()
        entries[key] = {**run_model(key, args), "context": ctx, "threads": args.threads}
        entries[key]["seconds"] = round(time.perf_counter() - began, 1)
    doc = store(Path(args.json), entries)
    text = zero_shot_markdown(doc)
    from compress.io import atomic_write_text

    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
