"""Benchmark: latency-aware planning vs torch-pruning's uniform magnitude pruning at the same MACs, on this CPU.

For each model and batch size: plan a ``latency: 0.5`` target on this CPU (measured latency table, NetAdapt-style
search, end-to-end check), apply it, prune a copy uniformly with torch-pruning's ``MagnitudePruner`` to the same
MACs, then time original / planned / uniform interleaved in one process and print latency ratios, MACs ratios
and latency efficiency (speed-up / MAC reduction: 1.0 means time fell exactly as fast as MACs). All latencies
are of BN-folded models (deploy form; ``--no-fold-bn`` times them as they are), the original's included.

Models: (a) the Fashion-MNIST small ResNet (widths 16/32/64, 28 px, 1 channel): with a cached trained baseline
(``$COMPRESS_CACHE/baselines``) and the Fashion-MNIST files present, test top-1 is reported after BatchNorm
re-calibration on the same 16 training batches for every variant (no fine-tuning), else "n/a"; (b) torchvision
ResNet-18 at 224 px (random weights: latency only).

Usage::

    PYTHONPATH=. python benchmarks/plan_latency.py --quick        # small ResNet b1/b64, ResNet-18 b1
    PYTHONPATH=. python benchmarks/plan_latency.py                # all cases, batch 1 and 64
    PYTHONPATH=. python benchmarks/plan_latency.py --quick --cases small:1 small:64 resnet18:1 resnet18:64
    PYTHONPATH=. python benchmarks/plan_latency.py --quick --runtime onnxruntime   # planned and timed in ORT

With ``--runtime`` other than ``torch`` the plan is made for that runtime (its latency table and closed loop
measured in it) and every variant is timed as a BN-folded session of it, the original's included.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import glob
import itertools
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compress.env import cpu_model  # noqa: E402
from compress.io import atomic_write_text  # noqa: E402
from compress.measurement import compare_latency, cost  # noqa: E402
from compress.planning import PlanOptions, apply_plan, plan  # noqa: E402
from compress.planning.uniform import uniform_at_macs  # noqa: E402

__all__ = ["compare_variants", "markdown_table", "machine_lines", "COLUMNS", "CASES", "BN_BATCHES"]

BN_BATCHES = 16  # training batches every variant's BatchNorms are re-estimated on before its accuracy is taken

COLUMNS = ("model", "batch", "variant", "ms", "iqr_ms", "speedup", "latency_ratio", "macs_ratio", "efficiency",
           "top1", "top1_finetuned", "verdict")


def compare_variants(variants: dict[str, nn.Module], x: torch.Tensor, *, device: str, batch: int,
                     dtype: torch.dtype, channels_last: bool, runs: int, fold_bn: bool = True,
                     runtime: str = "torch") -> list[dict[str, Any]]:
    """Time the variants interleaved (first = original) and add MACs ratio and latency efficiency per row.

    ``runtime`` other than ``torch``: every variant is a checked, BN-folded session of that runtime
    (:mod:`compress.measurement.runtimes`), timed interleaved with the others in it."""
    if runtime == "torch":
        comp = compare_latency(variants, x, device=device, batch_sizes=(batch,), dtype=dtype,
                               channels_last=channels_last, runs=runs, fold_bn=fold_bn)
        timed = comp.rows()
        base = comp.results["original"].stats[batch]
        base_ms, base_iqr = base.median_ms, base.iqr_ms
    else:
        comp = compare_latency(variants, x, device=device, batch_sizes=(batch,), dtype=dtype,
                               channels_last=channels_last, runs=runs, runtimes=(runtime,))
        timed = [r for r in comp.runtime_rows() if r["runtime"] == runtime]
        if any(r.get("skipped") for r in timed):
            raise SystemExit(f"runtime {runtime} could not time the variants: {timed[0]['skipped']}")
        base_ms, base_iqr = timed[0]["baseline_ms"], timed[0]["baseline_iqr_ms"]
        timed = timed[1:]
    base_macs = cost(variants["original"], x).macs
    rows = [{"variant": "original", "ms": base_ms, "iqr_ms": base_iqr, "speedup": 1.0,
             "latency_ratio": 1.0, "macs_ratio": 1.0, "efficiency": 1.0, "verdict": "baseline"}]
    for row in timed:
        macs_ratio = cost(variants[row["model"]], x).macs / base_macs
        speedup = row["ratio"]
        rows.append({"variant": row["model"], "ms": row["compressed_ms"], "iqr_ms": row["compressed_iqr_ms"],
                     "speedup": speedup, "latency_ratio": 1.0 / speedup, "macs_ratio": macs_ratio,
                     "efficiency": speedup * macs_ratio, "verdict": row["verdict"]})
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return "n/a" if value is None else str(value)


def markdown_table(rows: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def machine_lines(device: str) -> list[str]:
    """Where and when it ran: date, machine, versions, threads, load."""
    import torch_pruning as tp
    import torchvision

    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    return [f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
            f"- machine: {platform.node()} | {platform.platform()} | CPU {cpu_model()} ({os.cpu_count()} cores)"
            + (f" | GPU {gpu}" if gpu else ""),
            f"- torch {torch.__version__}, torchvision {torchvision.__version__}, torch-pruning {tp.__version__}; "
            f"intra-op threads {torch.get_num_threads()}; load average at start {_load_average()}"]


def _trained_small_resnet(model: nn.Module) -> tuple[nn.Module, Any, Any, list, Any] | None:
    """``(model with trained weights, test loader, calib loader, BN batches, train loader)`` when a baseline and
    the data exist.

    The BN batches are the first ``BN_BATCHES`` batches of the (shuffled, seeded) training loader, kept as a list
    so every variant is re-calibrated on the same images.
    """
    from compress.baseline import baseline_cache_key, default_cache_dir
    from compress.data import DataConfig, build_data
    from compress.recipe.schema import load_recipe

    recipe = load_recipe(None)  # the default recipe's baseline first (same model/data/training), then any other
    own = default_cache_dir() / "baselines" / (baseline_cache_key(recipe.model, recipe.data, recipe.baseline.train,
                                                                  recipe.seed) + ".pt")
    others = sorted(glob.glob(str(default_cache_dir() / "baselines" / "*.pt")))
    for path in ([str(own)] if own.is_file() else []) + others:
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(blob["state_dict"])
        except Exception:  # noqa: BLE001 - another architecture's baseline: try the next file
            continue
        try:
            data = build_data(DataConfig(source="fashion-mnist"))
        except Exception as err:  # noqa: BLE001 - no data files: accuracy stays n/a
            print(f"trained baseline {path} found but Fashion-MNIST is unavailable ({err})")
            return None
        print(f"accuracy: trained baseline {path}")
        torch.manual_seed(0)
        bn_batches = [images for images, _ in itertools.islice(data.train, BN_BATCHES)]
        return model.eval(), data.test, data.calib, bn_batches, data.train
    return None


def _top1(model: nn.Module, loader: Any, bn_batches: list | None) -> float | None:
    """Test top-1 of a copy of ``model`` after BatchNorm re-calibration on ``bn_batches`` (no fine-tuning)."""
    if loader is None:
        return None
    from compress.measurement import evaluate
    from compress.training import calibrate_bn

    twin = copy.deepcopy(model)
    calibrate_bn(twin, [(images,) for images in bn_batches], max_batches=len(bn_batches))
    return evaluate(twin, loader, device="cpu", verbose=False).summary()["top1"]


def _finetuned_top1(model: nn.Module, teacher: nn.Module, train: Any, test: Any, bn_batches: list,
                    args: argparse.Namespace) -> float | None:
    """Test top-1 of a copy of ``model`` after BN re-calibration and ``args.finetune_epochs`` epochs of
    distillation from ``teacher`` (the original): the same recipe, data order and seed for every variant."""
    if train is None or args.finetune_epochs <= 0:
        return None
    from compress.measurement import evaluate
    from compress.measurement.timing import num_threads
    from compress.training import DistillConfig, Teacher, TrainConfig, calibrate_bn, fit

    twin = copy.deepcopy(model)
    calibrate_bn(twin, [(images,) for images in bn_batches], max_batches=len(bn_batches))
    for p in twin.parameters():
        p.requires_grad_(True)
    config = TrainConfig(epochs=args.finetune_epochs, lr=0.02, warmup_epochs=0.1)
    with num_threads(args.finetune_threads):  # training is not timed: use every core
        fit(twin, train, config=config, device="cpu", teacher=Teacher(teacher, DistillConfig(alpha=0.7)),
            seed=0, verbose=args.verbose)
    return evaluate(twin.eval(), test, device="cpu", verbose=False).summary()["top1"]


def small_resnet_case() -> tuple[nn.Module, torch.Tensor, Any, Any, list | None, Any]:
    from compress.models import build_model

    torch.manual_seed(0)
    model = build_model({"name": "compress:small_resnet", "kwargs": {"widths": [16, 32, 64]}}).eval()
    found = _trained_small_resnet(model)
    test, calib, bn, train = found[1:] if found else (None, None, None, None)
    return (found[0] if found else model), torch.randn(1, 1, 28, 28), test, calib, bn, train


def torchvision_case(name: str) -> Callable[[], tuple[nn.Module, torch.Tensor, Any, Any, list | None, Any]]:
    """A torchvision classifier at 224 px with random weights (latency only: no accuracy columns)."""

    def build() -> tuple[nn.Module, torch.Tensor, Any, Any, list | None, Any]:
        import torchvision

        torch.manual_seed(0)
        return torchvision.models.get_model(name, weights=None).eval(), torch.randn(1, 3, 224, 224), None, None, \
            None, None

    return build


resnet18_case = torchvision_case("resnet18")

CASES: dict[str, tuple[str, Callable, int]] = {
    "small:1": ("small_resnet 28px", small_resnet_case, 1), "small:64": ("small_resnet 28px", small_resnet_case, 64),
    **{f"{name}:{batch}": (f"{name} 224px", torchvision_case(name), batch)
       for name in ("resnet18", "mobilenet_v2", "efficientnet_b0") for batch in (1, 64)}}


def uniform_at_latency(model: nn.Module, x: torch.Tensor, *, latency_ratio: float, round_to: int, batch: int,
                       args: argparse.Namespace, steps: int = 12, max_ratio: float = 0.9) -> tuple[nn.Module, float]:
    """torch-pruning's uniform model at (about) a given latency: ratios ``max_ratio * k / steps`` are timed
    against the original in one interleaved run, and the least pruned one measured at most ``latency_ratio``
    of the original's time is returned (else the fastest). Returns ``(model, ratio)``."""
    from compress.planning.uniform import uniform_prune

    ratios = [max_ratio * k / steps for k in range(1, steps + 1)]
    variants = {"original": model} | {f"{r:.3f}": uniform_prune(model, x, ratio=r, round_to=round_to)
                                      for r in ratios}
    rows = compare_variants(variants, x, device="cpu", batch=batch, dtype=torch.float32, channels_last=False,
                            runs=args.runs, fold_bn=args.fold_bn, runtime=args.runtime)[1:]
    fast = [r for r in rows if r["latency_ratio"] <= latency_ratio]
    chosen = min(fast, key=lambda r: float(r["variant"])) if fast else min(rows, key=lambda r: r["latency_ratio"])
    return variants[chosen["variant"]], float(chosen["variant"])


def run_case(name: str, build: Callable, batch: int, args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """Plan, apply, prune uniformly to the same MACs (and, with accuracy, to the same latency), compare them all;
    return table rows and plan notes."""
    model, x, test, calib, bn_batches, train = build()
    began = time.perf_counter()
    p = plan(model, x, PlanOptions(target={"latency": args.target}, device="cpu", batch=batch,
             forms=tuple(args.forms), max_iters=args.max_iters, max_widths=args.max_widths, min_keep=args.min_keep,
             min_keep_limit=args.min_keep_limit, tolerance=args.tolerance, table_runs=args.table_runs, runs=args.runs,
             cache_dir=args.cache_dir, fold_bn=args.fold_bn or args.runtime != "torch", runtime=args.runtime),
             calib=calib, verbose=args.verbose)
    planned = apply_plan(copy.deepcopy(model), p, x, calib=list(itertools.islice(calib, 4)) if calib else None)
    uniform, ratio = uniform_at_macs(model, x, macs=cost(planned, x).macs, round_to=p.align)
    variants = {"original": model, "planned": planned, f"uniform tp (ratio {ratio:.2f})": uniform}
    if test is not None:  # accuracy is known: also the uniform model as fast as the plan, to compare accuracy at it
        fast, fast_ratio = uniform_at_latency(model, x, latency_ratio=p.measured_ratio, round_to=p.align, batch=batch,
                                              args=args)
        variants[f"uniform tp at planned latency (ratio {fast_ratio:.2f})"] = fast
    rows = compare_variants(variants, x, device="cpu", batch=batch, dtype=torch.float32, channels_last=False,
                            runs=args.runs, fold_bn=args.fold_bn, runtime=args.runtime)
    for row, m in zip(rows, variants.values()):
        row.update(model=name, batch=batch, top1=_top1(m, test, bn_batches),
                   top1_finetuned=_finetuned_top1(m, model, train, test, bn_batches, args) if m is not model
                   else None)
    rounds = [f"round {it.index}: predicted target {it.predicted_target:.3f}, predicted {it.predicted_ratio:.3f}, "
              f"measured {it.measured_ratio:.3f}" for it in p.iterations]
    notes = [f"### {name}, batch {batch} ({time.perf_counter() - began:.0f} s)", "", "```", *p.summary_lines(),
             *rounds,
             *p.notes[:12], *([f"... {len(p.notes) - 12} more notes"] if len(p.notes) > 12 else []),
             f"table: {p.table['measured']} entries measured, {p.table['reused']} reused ({p.table['path']})",
             "```", ""]
    return rows, notes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="short run: smaller search (4 widths a group, min_keep 0.5) and no 224 px batch 64")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=None,
                        help="cases to run (default: all, or all but resnet18:64 with --quick)")
    parser.add_argument("--no-fold-bn", dest="fold_bn", action="store_false",
                        help="time models with their BatchNorms (default: BN-folded deploy form on every side)")
    parser.add_argument("--runtime", default="torch",
                        help="runtime the plan is made for and every variant is timed in (compress.measurement."
                             "runtimes names: torch, onnxruntime, openvino, ...; default torch, eager)")
    parser.add_argument("--target", type=float, default=0.5, help="latency target (fraction of the original)")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="the planner counts its target met up to target + tolerance (default 0: <= target)")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads (default 1: on a shared machine two threads stall on each other)")
    parser.add_argument("--forms", nargs="+", default=["prune", "separable", "grouped"])
    parser.add_argument("--runs", type=int, default=20, help="interleaved timed rounds per comparison (>= 20)")
    parser.add_argument("--cache-dir", default=None, help="latency-table cache (default $COMPRESS_CACHE/latency)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "plan_cpu.md"))
    parser.add_argument("--finetune-epochs", type=int, default=0,
                        help="also fine-tune planned and uniform (BN re-calibration, then this many epochs of "
                             "distillation from the original on the Fashion-MNIST train split; default 0: none)")
    parser.add_argument("--finetune-threads", type=int, default=2, help="intra-op threads while fine-tuning")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    quick = args.quick
    args.max_iters, args.max_widths, args.min_keep, args.table_runs = (3, 4, 0.5, 3) if quick else (3, 8, 0.25, 5)
    args.min_keep_limit = 0.125
    big = [c for c in CASES if c.endswith(":64") and not c.startswith("small")]  # --quick leaves these out
    chosen = args.cases or [c for c in CASES if not (quick and c in big)]
    cases = [CASES[c] for c in chosen]
    command = "PYTHONPATH=. python benchmarks/plan_latency.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = [f"# Latency-aware planning on CPU ({args.runtime})", "", f"- command: `{command.strip()}`",
              *machine_lines("cpu"), ""]
    rows, notes = [], []
    for name, build, batch in cases:
        print(f"== {name}, batch {batch}", flush=True)
        case_rows, case_notes = run_case(name, build, batch, args)
        rows += case_rows
        notes += case_notes
        print(markdown_table(case_rows), flush=True)
    text = "\n".join(header + [markdown_table(rows), "", explain(args.fold_bn), "", *notes,
                               f"load average at end: {_load_average()}", ""])
    atomic_write_text(args.out, text)
    print(f"\nwrote {args.out}")


def explain(fold_bn: bool) -> str:
    """The paragraph under the table: what each column means and how the variants were made."""
    form = ("of the BN-folded models (deploy form: every BatchNorm that follows a conv folded into it, in the "
            "original too)" if fold_bn else "of the models as they are (BatchNorms not folded)")
    return (f"ms: median of interleaved runs {form}; latency_ratio = variant ms / original ms; macs_ratio = variant "
            "MACs / original MACs; efficiency = speed-up x macs_ratio = speed-up / MAC reduction (1.0: time fell as "
            "fast as MACs; below 1: MACs fell faster than time). top1: Fashion-MNIST test accuracy after BatchNorm "
            f"re-calibration on the same {BN_BATCHES} training batches for every variant, the original included, "
            "and no fine-tuning (n/a: no cached trained baseline or no data). top1_finetuned: the same after "
            "`--finetune-epochs` epochs of distillation from the original (alpha 0.7, T 4, SGD lr 0.02, seed 0: the "
            "same recipe and data order for planned and uniform; n/a: not run). Planned and uniform sit at about the "
            "same MACs; the latency comparison is 'at the same accuracy' as far as their top1_finetuned agree. "
            "The uniform model is torch-pruning's MagnitudePruner (L2, same ratio in every group, widths rounded "
            "to the plan's alignment) at the ratio whose MACs come closest to the planned MACs from below (or the "
            "fewest MACs it reaches, when it cannot get that low); 'uniform tp at planned latency' (only where "
            "accuracy is measured) is the least pruned of the ratios 0.075..0.9 measured at most as slow as the "
            "planned model in a separate interleaved run (else the fastest of them), i.e. the uniform answer to "
            "the same latency target. Timings on a shared machine are noisy: read the "
            "IQRs and the load averages.")


if __name__ == "__main__":
    main()
