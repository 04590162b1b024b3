"""GPU latency of torchvision models before/after compression, measured in one process, alternating.

Variants per model: the original; torch-pruning's MagnitudePruner at 50% channels (uniform); and compress'
SVD-initialised separable rewrite (T=2) of every 3x3 conv with >= 64 channels. Prints a Markdown table.

Reproduce (on a CUDA machine): PYTHONPATH=. python3 benchmarks/gpu_latency.py [--dtype bfloat16] [--batch 64]
"""
from __future__ import annotations

import argparse
import copy
import datetime
import sys

import torch
import torch_pruning as tp
import torchvision

from compress.measurement import compare_latency, cost
from compress.transforms import rewrite


def tp_uniform(model: torch.nn.Module, x: torch.Tensor, ratio: float) -> torch.nn.Module:
    model = copy.deepcopy(model)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
    pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=ratio, ignored_layers=head, round_to=8)
    pruner.step()
    return model


def separable(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    model = copy.deepcopy(model)
    rewrite(model, "separable", T=2, kernel_sizes=(3,), min_channels=64, example_inputs=x)
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2", "efficientnet_b0"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    dev_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"# GPU latency, {dev_name}, torch {torch.__version__}, {args.dtype}, channels_last, batch {args.batch},"
          f" {args.size} px, {datetime.date.today()}\n")
    print("command: PYTHONPATH=. python3 " + " ".join(sys.argv) + "\n")
    print("| model | variant | MACs (G) | MAC reduction | median ms | speedup vs original | verdict |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None).eval()
        x = torch.randn(1, 3, args.size, args.size)
        variants = {"original": model, "tp-uniform-50%": tp_uniform(model, x, 0.5)}
        try:
            variants["compress-separable-T2"] = separable(model, x)
        except Exception as err:  # noqa: BLE001 - a benchmark row, not a crash
            print(f"| {name} | compress-separable-T2 | - | - | - | - | failed: {type(err).__name__}: {err} |")
        macs = {k: cost(v, x).macs for k, v in variants.items()}
        comp = compare_latency(variants, x, device=args.device, batch_sizes=(args.batch,), dtype=args.dtype,
                               channels_last=True, runs=args.runs)
        for k in variants:
            ms = comp.results[k].median_ms(args.batch)
            sp = comp.speedup(k, args.batch)
            verdict = "-" if k == "original" else (f"faster by {sp:.2f}x" if sp >= 1 else f"SLOWER by {1 / sp:.2f}x")
            print(f"| {name} | {k} | {macs[k] / 1e9:.3f} | {macs['original'] / macs[k]:.2f}x | {ms:.3f} | "
                  f"{sp:.2f}x | {verdict} |", flush=True)


if __name__ == "__main__":
    main()
