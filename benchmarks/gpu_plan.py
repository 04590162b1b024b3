"""GPU benchmark: latency-aware plan vs original vs torch-pruning uniform 50% channel pruning.

CUDA, bfloat16, channels_last, batch 64, 224 px, torchvision ResNet-18 / MobileNetV2 / EfficientNet-B0
(``weights=None``: latency only). For each model: plan a ``latency`` target on the GPU (measured latency table,
search, end-to-end check), apply it, prune a copy uniformly (torch-pruning ``MagnitudePruner``, L2, 50% of
every group, widths rounded to the plan's alignment), then time the three interleaved in one process and
print a Markdown table (also written to ``--out``). Sized to finish in a few minutes on one H100.

Usage::

    PYTHONPATH=. python3 benchmarks/gpu_plan.py --out results/gpu_plan.md
    PYTHONPATH=. python3 benchmarks/gpu_plan.py --device cpu --quick --out /tmp/gpu_plan_smoke.md   # smoke test
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from plan_latency import COLUMNS, compare_variants, machine_lines, markdown_table  # noqa: E402

from compress.io import atomic_write_text  # noqa: E402
from compress.planning import PlanOptions, apply_plan, plan  # noqa: E402
from compress.planning.uniform import uniform_prune  # noqa: E402

MODELS = ("resnet18", "mobilenet_v2", "efficientnet_b0")
# Rewrites are tried on ResNet-18's dense 3x3 convs; the mobile nets are already depthwise-separable and their
# 1x1 convs would each need seconds of grouped-rewrite pricing, so they are planned by pruning alone. Every model
# may also drop identity-shortcut blocks: with random weights and random calibration images their drop costs
# say nothing about accuracy (this benchmark measures latency only), but what dropping saves is measured.
FORMS = {"resnet18": ("prune", "separable", "grouped", "drop")}
DEFAULT_FORMS = ("prune", "drop")
LATENCY_COLUMNS = tuple(c for c in COLUMNS if not c.startswith("top1"))  # random weights: no accuracy


def run_model(name: str, args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, args.res, args.res)
    calib = [torch.randn(8, 3, args.res, args.res) for _ in range(2)]  # stand-in data: latency only
    began = time.perf_counter()
    p = plan(model, x, PlanOptions(target={"latency": args.target}, device=args.device, batch=args.batch,
             dtype=args.dtype, channels_last=True, forms=FORMS.get(name, DEFAULT_FORMS), max_iters=args.max_iters,
             max_widths=args.max_widths, min_keep=0.5, table_runs=args.table_runs, runs=args.runs,
             cache_dir=args.cache_dir), calib=calib, verbose=False)
    planned = apply_plan(copy.deepcopy(model), p, x, calib=calib)
    uniform = uniform_prune(model, x, ratio=0.5, round_to=p.align)
    rows = compare_variants({"original": model, "planned": planned, "uniform tp 50%": uniform}, x,
                            device=args.device, batch=args.batch, dtype=args.dtype, channels_last=True,
                            runs=args.runs)
    for row in rows:
        row.update(model=f"{name} {args.res}px", batch=args.batch)
    seconds = time.perf_counter() - began
    notes = [f"### {name} ({seconds:.0f} s)", "", "```", *p.summary_lines(),
             *(f"round {it.index}: predicted {it.predicted_ratio:.3f}, measured {it.measured_ratio:.3f}"
               for it in p.iterations),
             *p.notes[:12], *([f"... {len(p.notes) - 12} more notes"] if len(p.notes) > 12 else []),
             f"table: {p.table['measured']} entries measured, {p.table['reused']} reused", "```", ""]
    return rows, notes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="Markdown file to write")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="smoke run: 64 px, batch 2, tiny candidate sets")
    parser.add_argument("--target", type=float, default=0.7, help="latency target (fraction of the original)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--cache-dir", default=None, help="latency-table cache (default $COMPRESS_CACHE/latency)")
    args = parser.parse_args(argv)
    args.dtype = torch.bfloat16
    args.res, args.batch, args.runs = (64, 2, 20) if args.quick else (224, 64, 20)
    args.max_iters, args.max_widths, args.table_runs = (1, 2, 2) if args.quick else (2, 4, 10)
    if args.device == "cpu":
        torch.set_num_threads(1)  # shared CPUs: two threads stall on each other
    command = "PYTHONPATH=. python3 benchmarks/gpu_plan.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = [f"# Latency-aware planning on {args.device} (bfloat16, channels_last, batch {args.batch})", "",
              f"- command: `{command.strip()}`", *machine_lines(args.device), ""]
    rows, notes, began = [], [], time.perf_counter()
    for name in args.models:
        print(f"== {name}", flush=True)
        model_rows, model_notes = run_model(name, args)
        rows += model_rows
        notes += model_notes
        print(markdown_table(model_rows, LATENCY_COLUMNS), flush=True)
    table = markdown_table(rows, LATENCY_COLUMNS)
    footer = f"total {time.perf_counter() - began:.0f} s"
    atomic_write_text(args.out, "\n".join(header + [table, "", *notes, footer, ""]))
    print(f"\n{table}\n\n{footer}; wrote {args.out}")


if __name__ == "__main__":
    main()
