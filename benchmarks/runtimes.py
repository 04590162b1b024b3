"""Benchmark: the default recipe's small ResNet, full width vs pruned to ~half its MACs, timed in several runtimes.

The model is the one ``compress.run``'s default recipe builds (``compress:small_resnet`` with the recipe's
kwargs) with random weights (timing does not depend on their values), pruned on a copy with
:func:`compress.prune` at the recipe's prune step settings (``macs_target``, ``importance``). Both are timed with
``compare_latency(runtimes=...)``: each model becomes a BN-folded session per runtime, checked against eager
PyTorch, and all sessions are timed interleaved (one call of each per round, order reversed every other round),
so load from other processes on a shared machine hits every cell alike. Cells are medians with IQRs; verdicts
say "no measurable difference" where the IQRs overlap.

Usage::

    python benchmarks/runtimes.py                                  # batch 1 and 64, 1 thread, torch/ort/openvino
    python benchmarks/runtimes.py --runtimes torch torch-compile onnxruntime openvino --runs 200
"""
from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import RESULTS, command_line, context, context_lines, fmt, md_table  # noqa: E402

from compress import prune  # noqa: E402
from compress.env import seed_everything  # noqa: E402
from compress.io import atomic_write_text  # noqa: E402
from compress.measurement import Comparison, compare_latency, cost  # noqa: E402
from compress.measurement.runtimes import runtime  # noqa: E402
from compress.models import build_model  # noqa: E402
from compress.recipe.schema import load_recipe  # noqa: E402

__all__ = ["main", "default_models", "table"]

LOG = logging.getLogger("benchmarks.runtimes")
FMNIST_SIDE = 28  # Fashion-MNIST's native image side, the default recipe's input size (no resize)
HEADER = ("runtime", "version", "batch", "model", "MMACs", "median ms", "IQR ms", "speed-up vs full",
          "verdict vs full", "vs eager torch (same model)", "max rel. error")


def default_models(*, size: int, seed: int, macs_target: float | None = None,
                   round_to: tuple[int, ...] = ()) -> tuple[dict[str, nn.Module], torch.Tensor, dict]:
    """``({"full", "pruned", "pruned-rN"...: model}, example_inputs (1, C, size, size), facts)``: the default
    recipe's model, pruned as ``recipes/prune50_fmnist.yaml`` prunes it (the default recipe itself now plans
    widths for a runtime); ``pruned-rN`` is pruned with ``round_to=N`` (widths multiples of N)."""
    recipe = load_recipe(None)
    prune_recipe = load_recipe(str(Path(__file__).resolve().parents[1] / "recipes" / "prune50_fmnist.yaml"))
    step = next(s.config for s in prune_recipe.steps if s.name == "prune")
    target = macs_target if macs_target is not None else step.macs_target
    seed_everything(seed)
    full = build_model(recipe.model).eval()
    channels = next(m for m in full.modules() if isinstance(m, nn.Conv2d)).in_channels
    x = torch.randn(1, channels, size, size)
    models, widths = {"full": full}, {}
    for multiple in (None, *round_to):
        name = "pruned" if multiple is None else f"pruned-r{multiple}"
        models[name] = copy.deepcopy(full)
        result = prune(models[name], x, macs_target=target, importance=step.importance, round_to=multiple)
        models[name].eval()
        widths[name] = [c for n, c in result.channels_after.items() if n.endswith("conv2")]
    facts = {"model": recipe.model.name, "kwargs": dict(recipe.model.kwargs), "macs_target": target,
             "importance": step.importance, "block_widths": widths}
    return models, x, facts


def table(comp: Comparison, macs: dict[str, int]) -> str:
    """The Markdown table of every (runtime, batch, model) row; skipped runtimes get one row with the reason."""
    rows = []
    for r in comp.rows():
        if r["skipped"]:
            rows.append([r["runtime"], r["version"] or "—", r["batch"], "—", "—", "—", "—", "—",
                         f"not measured: {r['skipped']}", "—", "—"])
            continue
        rows.append([r["runtime"], r["version"], r["batch"], r["model"], fmt(macs[r["model"]] / 1e6, ".2f"),
                     fmt(r["compressed_ms"], ".3f"), fmt(r["compressed_iqr_ms"], ".3f"),
                     "—" if r["model"] == comp.names[0] else f"{r['ratio']:.2f}x", r["verdict"],
                     r["vs_torch"] or "—", fmt(r["max_rel_error"], ".1e")])
    return md_table(HEADER, rows)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runtimes", nargs="+", default=["torch", "onnxruntime", "openvino"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=100, help="interleaved timed rounds per batch size")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--size", type=int, default=FMNIST_SIDE, help="input side in pixels")
    p.add_argument("--macs-target", type=float, default=None, help="default: the default recipe's prune step")
    p.add_argument("--round-to", type=int, nargs="*", default=[8, 16],
                   help="also time copies pruned with these round_to multiples (SIMD-friendly widths)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "runtimes_cpu.md")
    p.add_argument("--no-write", action="store_true", help="print only")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Time the models, print the Markdown section and (unless ``--no-write``) write it to ``--out``."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # libraries (the ONNX exporter) stay quiet
    LOG.setLevel(logging.INFO)
    argv = sys.argv[1:] if argv is None else argv
    args = _args(argv)
    ctx = context(command_line("benchmarks/runtimes.py", argv))
    start = time.perf_counter()
    models, x, facts = default_models(size=args.size, seed=args.seed, macs_target=args.macs_target,
                                      round_to=tuple(args.round_to))
    macs = {name: cost(m, x).macs for name, m in models.items()}
    comp = compare_latency(models, x, runtimes=tuple(args.runtimes), batch_sizes=tuple(args.batch_sizes),
                           threads=args.threads, runs=args.runs, warmup=args.warmup, verbose=True)
    s = comp.settings
    versions = ", ".join(f"{name} {runtime(name).version() or 'not installed'}" for name in args.runtimes)
    text = ["# Latency per runtime: default-recipe small ResNet, full vs pruned (CPU)", "",
            *context_lines(ctx, seconds=time.perf_counter() - start),
            f"- runtimes: {versions}",
            f"- model: `{facts['model']}` {facts['kwargs']}, random weights, input (1, {x.shape[1]}, {args.size}, "
            f"{args.size}) repeated to each batch; pruned copies: `compress.prune(macs_target={facts['macs_target']}, "
            f"importance={facts['importance']!r}, round_to=N)` (`pruned`: no rounding); each residual block's "
            "widths: " + "; ".join(f"{n} {w}" for n, w in facts["block_widths"].items()),
            f"- timing: {s.threads} thread(s) in every runtime (torch intra-op threads, ONNX Runtime intra/inter-op "
            f"threads, OpenVINO INFERENCE_NUM_THREADS), {s.runs} interleaved rounds after {s.warmup} warm-up calls "
            f"per session, medians and IQRs in ms; BN-folded models everywhere; float32",
            "- the machine is shared with other processes (load average above): absolute times move with their "
            "load; ratios within one interleaved run are what to compare, and verdicts only claim a difference "
            "where the IQRs do not overlap",
            "", table(comp, macs), ""]
    print("\n".join(text))
    if not args.no_write:
        atomic_write_text(args.out, "\n".join(text))
        LOG.info("wrote %s", args.out)
    print("reproduce: " + ctx["command"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
