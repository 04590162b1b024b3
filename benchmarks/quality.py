"""Quality at equal MACs budget: torch-pruning vs compress pruning vs compress rewrites, on Fashion-MNIST.

For each baseline the toolkit trains (``compress:small_resnet`` widths [16, 32, 64] from the default recipe,
``compress:small_mobilenet_v2`` from ``recipes/mobilenet_fmnist.yaml``; both trained once on the full train
split and cached, shared with ``python -m compress.run``) and each budget (default 50% and 25% of the MACs):

(a) ``tp``: torch-pruning ``MagnitudePruner`` (L2, uniform ratio bisected to the budget) + plain fine-tune
    (label loss only);
(b) ``prune``: ``compress.prune`` with an analysis-driven importance (chosen per model on the *val* split,
    after BN calibration, among ``--importances``) + BN calibration + distillation fine-tune;
(c) ``rewrite``: ``compress.rewrite`` (separable for the ResNet, with ``T`` per layer from an error budget;
    grouped ``auto`` for the MobileNet, whose 3x3 convs are already depthwise) + BN calibration + distillation.

Same fine-tune data (a fixed random subset of ``--finetune-images`` training images, or all), epochs,
learning rate and seed for every method. Top-1 is measured on the full 10,000-image test set right after the
transform, after BN calibration (quick mode: on the first 2,000 test images) and after the fine-tune (always
all 10,000); then params, MACs, and CPU latency of all variants
against the baseline, interleaved in one process, at batch 1 and 64 with ``--threads`` (default 1) threads.

    python benchmarks/quality.py --quick      # 10,000 fine-tune images, 1 epoch
    python benchmarks/quality.py              # full train split, 2 epochs (documented time in RESULTS.md)

Writes ``benchmarks/results/quality_<model>.json`` (one per model, each with its own command, date and load) and
prints one JSON line (the same documents) last. The small MobileNet is slow on a CPU (depthwise convs at 28 px:
a 10,000-image evaluation takes minutes on a loaded 2-core machine), so ``benchmarks/run.py --quick`` runs
only the ResNet and shows the MobileNet's last saved result with its own date.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, command_line, context, ensure_path  # noqa: E402

ensure_path()
from methods import ours_prune, ours_rewrite, tp_magnitude  # noqa: E402

__all__ = ["MODELS", "Setup", "load_setup", "finetune_loader", "run_model", "main"]

# model key -> (recipe giving model/data/baseline config, rewrite kind for method (c))
MODELS: dict[str, tuple[str | None, str]] = {
    "small_resnet": (None, "separable"),  # None: the embedded default recipe (its baseline cache is shared)
    "small_mobilenet_v2": ("recipes/mobilenet_fmnist.yaml", "grouped"),
}
METHODS = ("tp", "prune", "rewrite")


@dataclass
class Setup:
    """One baseline and its data.

    Attributes:
        key: model key of :data:`MODELS`.
        recipe: the parsed recipe whose model/data/baseline sections define the baseline.
        data: loaders (test: the full 10,000 images).
        baseline: the trained original, eval mode, frozen.
        example: ``(1, C, H, W)`` zeros for tracing and latency.
        origin: where the baseline came from (cache / trained) and its training history.
        stage_test: loader for the intermediate stages (after transform / after BN calibration): the full test
            set, or its first N images in quick mode; final accuracies always use the full test set.
        probe_val: loader of the val split (or its first N images) for choosing the importance.
    """

    key: str
    recipe: Any
    data: Any
    baseline: nn.Module
    example: torch.Tensor
    origin: dict[str, Any]
    stage_test: DataLoader | None = None
    probe_val: DataLoader | None = None

    def __post_init__(self) -> None:
        self.stage_test = self.stage_test or self.data.test
        self.probe_val = self.probe_val or self.data.val


def _head(loader: DataLoader, images: int | None) -> DataLoader:
    """``loader`` limited to its first ``images`` samples (same batch size, no shuffling)."""
    if images is None or images >= len(loader.dataset):
        return loader
    return DataLoader(Subset(loader.dataset, range(images)), batch_size=loader.batch_size, shuffle=False)


def load_setup(key: str, *, seed: int = 0, stage_images: int | None = None, verbose: bool = False,
               overrides: tuple[str, ...] = ()) -> Setup:
    """Build the data and obtain the cached (or freshly trained) baseline exactly as ``compress.run`` does.

    ``stage_images``: evaluate intermediate stages and the importance probe on this many images only.
    ``overrides``: ``--set``-style ``path=value`` edits of the model's recipe (e.g. a shorter baseline training,
    which is then cached under its own key).
    """
    from compress.baseline import obtain_baseline
    from compress.data import build_data
    from compress.env import seed_everything
    from compress.recipe.schema import load_recipe

    path = MODELS[key][0]
    recipe = load_recipe(str(Path(__file__).resolve().parents[1] / path) if path else None, overrides=overrides)
    seed_everything(recipe.seed)
    data = build_data(recipe.data, seed=recipe.seed)
    baseline, origin = obtain_baseline(recipe.model, recipe.data, recipe.baseline.train, data,
                                       device=torch.device("cpu"), seed=recipe.seed, verbose=verbose)
    for p in baseline.parameters():
        p.requires_grad_(False)
    return Setup(key, recipe, data, baseline.eval(), torch.zeros(1, *data.input_shape), origin,
                 stage_test=_head(data.test, stage_images), probe_val=_head(data.val, stage_images))


def finetune_loader(data: Any, images: int | None, *, seed: int) -> DataLoader:
    """The fine-tune loader shared by all methods: a fixed random subset of the train split (or all of it)."""
    dataset = data.train.dataset
    if images is not None and images < len(dataset):
        index = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:images]
        dataset = Subset(dataset, index.tolist())
    return DataLoader(dataset, batch_size=data.train.batch_size, shuffle=True, drop_last=True,
                      generator=torch.Generator().manual_seed(seed))


def _top1(model: nn.Module, loader: DataLoader) -> float:
    from compress.measurement import evaluate

    return round(evaluate(model, loader, verbose=False).top1, 6)


def _choose_importance(s: Setup, budget: float, analysis: Any, importances: list[str]) -> dict[str, Any]:
    """Prune at ``budget`` with each importance, calibrate BN, score on the val split (never test)."""
    from compress.training import calibrate_bn

    scores = {}
    for name in importances:
        model, _ = ours_prune(s.baseline, s.example, budget, importance=name, analysis=analysis)
        calibrate_bn(model, s.data.calib, max_batches=16)
        scores[name] = _top1(model, s.probe_val)
    return {"budget": budget, "val_images": len(s.probe_val.dataset), "val_top1_after_calibration": scores,
            "chosen": max(scores, key=scores.get)}


def _transform(s: Setup, method: str, budget: float, *, importance: str, analysis: Any) -> tuple[nn.Module, dict]:
    if method == "tp":
        return tp_magnitude(s.baseline, s.example, budget)
    if method == "prune":
        return ours_prune(s.baseline, s.example, budget, importance=importance, analysis=analysis)
    probe = next(iter(s.data.calib))[0][:8]  # real images: per-layer output errors of the rewrite
    calib = [images for images, *_ in s.data.calib]  # the rewrite step's default: the calibration split's batches
    return ours_rewrite(s.baseline, s.example, budget, kind=MODELS[s.key][1], analysis=analysis, probe=probe,
                        calib=calib)


def _run_method(s: Setup, method: str, budget: float, loader: DataLoader, args: argparse.Namespace, *,
                importance: str, analysis: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Transform, (calibrate), fine-tune one variant; accuracy after each stage."""
    from compress.measurement import cost
    from compress.training import Teacher, TrainConfig, calibrate_bn, fit

    t0 = time.perf_counter()
    model, info = _transform(s, method, budget, importance=importance, analysis=analysis)
    row: dict[str, Any] = {"method": method, "budget": budget, "transform": info,
                           "transform_s": round(time.perf_counter() - t0, 2),
                           "top1_transform": _top1(model, s.stage_test)}
    if method != "tp":  # the torch-pruning baseline method has no BN re-calibration step
        calibrate_bn(model, s.data.calib, max_batches=16)
        row["top1_calibrated"] = _top1(model, s.stage_test)
    for p in model.parameters():
        p.requires_grad_(True)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, warmup_epochs=0.1)
    distill = method != "tp"
    t1 = time.perf_counter()
    fit(model, loader, config=config, device="cpu", teacher=Teacher(s.baseline) if distill else None, seed=args.seed,
        verbose=False)
    row.update(finetune_s=round(time.perf_counter() - t1, 1), distill=distill, top1_finetuned=_top1(model, s.data.test))
    c = cost(model.eval(), s.example)
    row.update(params=c.params, macs=c.macs)
    return model.eval(), row


def _latency(s: Setup, variants: dict[str, nn.Module], args: argparse.Namespace) -> dict[str, Any]:
    """All variants against the baseline, interleaved in this process, ``args.threads`` threads."""
    from compress.measurement import compare_latency
    from compress.measurement.timing import num_threads

    with num_threads(args.threads):
        comp = compare_latency({"baseline": s.baseline, **variants}, s.example, batch_sizes=(1, 64),
                               runs=args.runs)
    out = {"settings": comp.settings.as_dict(), "models": {}}
    for name in comp.names:
        base = comp.results[comp.names[0]].stats
        # min is reported next to the median: on a loaded shared machine the median of a ~1 ms forward can be
        # dominated by waits for a core, the minimum much less so
        out["models"][name] = {str(b): {"median_ms": round(st.median_ms, 4), "iqr_ms": round(st.iqr_ms, 4),
                                        "min_ms": round(st.min_ms, 4), "speedup": round(comp.speedup(name, b), 4),
                                        "speedup_min": round(base[b].min_ms / st.min_ms, 4)}
                               for b, st in comp.results[name].stats.items()}
    return out


def run_model(key: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every method at every budget for one baseline, then one latency comparison of all variants."""
    from compress.analysis import analyze
    from compress.measurement import cost

    began = time.perf_counter()
    s = load_setup(key, seed=args.seed, stage_images=args.stage_images, verbose=args.verbose)
    base_cost = cost(s.baseline, s.example)
    result: dict[str, Any] = {
        "model": key, "spec": dict(s.recipe.model.spec()), "baseline_origin": _origin(s.origin),
        "baseline": {"top1": _top1(s.baseline, s.data.test), "top1_stage_test": _top1(s.baseline, s.stage_test),
                     "params": base_cost.params, "macs": base_cost.macs},
        "stage_test_images": len(s.stage_test.dataset), "data": s.data.describe(), "rows": []}
    analysis = analyze(s.baseline, s.data.calib, max_batches=8, verbose=False)
    probe = _choose_importance(s, 0.5, analysis, args.importances) if len(args.importances) > 1 else None
    importance = probe["chosen"] if probe else args.importances[0]
    result["importance_probe"] = probe
    loader = finetune_loader(s.data, args.finetune_images, seed=args.seed)
    result["finetune"] = {"images": len(loader.dataset), "epochs": args.epochs, "lr": args.lr,
                          "batch_size": loader.batch_size, "seed": args.seed}
    variants = {}
    for budget in args.budgets:
        for method in args.methods:
            model, row = _run_method(s, method, budget, loader, args, importance=importance, analysis=analysis)
            result["rows"].append(row)
            variants[f"{method}@{budget:g}"] = model
            if args.verbose:
                print(json.dumps(row), file=sys.stderr, flush=True)
    result["latency"] = _latency(s, variants, args)
    result["seconds"] = round(time.perf_counter() - began, 1)
    return result


def _origin(origin: dict[str, Any]) -> dict[str, Any]:
    hist = origin.get("history") or {}
    return {"source": origin.get("source"), "key": origin.get("key"),
            "train_seconds": hist.get("seconds"), "epochs": hist.get("epochs")}


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="fine-tune on 10,000 images for 1 epoch; intermediate stages on 2,000 test images; 20 runs")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.25], help="fractions of the original MACs")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--importances", nargs="+", default=["l2", "activation", "redundancy"],
                   help="compress importances tried for method (b); the best on val after BN calibration is used")
    p.add_argument("--finetune-images", type=int, default=None, help="fine-tune subset size (default: all)")
    p.add_argument("--stage-images", type=int, default=None,
                   help="evaluate the intermediate stages (after transform / BN calibration) and the importance "
                        "probe on the first N test / val images (default: all; final accuracy always uses all)")
    p.add_argument("--epochs", type=float, default=2.0, help="fine-tune epochs (same for every method)")
    p.add_argument("--lr", type=float, default=0.02, help="fine-tune peak learning rate")
    p.add_argument("--runs", type=int, default=50, help="timed latency runs per model and batch size")
    p.add_argument("--threads", type=int, default=1, help="CPU threads while timing latency")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=str(RESULTS), help="where quality_<model>.json files are written")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.finetune_images = args.finetune_images or 10000
        args.stage_images = args.stage_images or 2000
        args.epochs, args.runs = 1.0, 20
    return args


def main(argv: list[str] | None = None) -> int:
    from compress.io import atomic_write_json

    argv = sys.argv[1:] if argv is None else argv
    args = _args(argv)
    docs = []
    for key in args.models:  # one document per model, with the context (load, date) at its own start
        torch.manual_seed(args.seed)
        doc = {"section": "quality", "quick": args.quick, **context(command_line("benchmarks/quality.py", argv)),
               "eval_threads": torch.get_num_threads()}
        began = time.perf_counter()
        doc["models"] = [run_model(key, args)]
        doc["seconds"] = round(time.perf_counter() - began, 1)
        atomic_write_json(Path(args.out_dir) / f"quality_{key}.json", doc)
        docs.append(doc)
    print(json.dumps({"section": "quality", "documents": docs}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
