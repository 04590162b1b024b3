"""Dropping residual blocks of the trained Fashion-MNIST baselines: drop error, accuracy and CPU latency.

For each cached baseline (the default recipe's small ResNet, recipes/mobilenet_fmnist.yaml's small
MobileNetV2) every identity-shortcut block's drop error (fraction of its output energy lost when it becomes the
identity, on 8 calibration batches) is measured; then the k lowest-error blocks are dropped for k = 0..all,
each variant's BatchNorms re-estimated on 16 training batches (no fine-tuning), and its test top-1 measured
(``--test-images``, default all 10,000) next to MACs and its CPU latency against the original (BN-folded, one
interleaved run per batch size, ``--threads`` threads). Does the error order predict the accuracy damage, and
what does a dropped block buy in time?

Usage::

    python benchmarks/drop_blocks.py                       # both baselines (must be cached: see quality.py)
    python benchmarks/drop_blocks.py --models small_resnet --test-images 2000
"""
from __future__ import annotations

import argparse
import copy
import itertools
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, command_line, context, context_lines, md_table  # noqa: E402
from quality import MODELS, load_setup  # noqa: E402

from compress.io import atomic_write_text  # noqa: E402
from compress.measurement import compare_latency, cost, evaluate  # noqa: E402
from compress.measurement.timing import num_threads  # noqa: E402
from compress.training import calibrate_bn  # noqa: E402
from compress.transforms import block_drop_errors, drop_blocks  # noqa: E402


def _test_loader(loader: DataLoader, images: int | None) -> DataLoader:
    if images is None or images >= len(loader.dataset):
        return loader
    return DataLoader(Subset(loader.dataset, range(images)), batch_size=loader.batch_size, shuffle=False)


def run_model(key: str, args: argparse.Namespace) -> list[str]:
    s = load_setup(key)
    calib = list(itertools.islice(s.data.calib, 8))
    errors = block_drop_errors(s.baseline, calib)
    order = sorted(errors, key=errors.get)
    torch.manual_seed(0)
    bn_batches = [(images,) for images, _ in itertools.islice(s.data.train, 16)]
    test = _test_loader(s.data.test, args.test_images)
    base_macs = cost(s.baseline, s.example).macs
    variants, rows = {"original": s.baseline}, []
    for k in range(len(order) + 1):
        model = copy.deepcopy(s.baseline)
        if k:
            drop_blocks(model, order[:k])
            calibrate_bn(model, bn_batches, max_batches=len(bn_batches))
        name = "original" if k == 0 else f"drop {k}"
        variants[name] = model.eval()
        top1 = evaluate(model, test, device="cpu", verbose=False).summary()["top1"]
        rows.append([name, ", ".join(order[:k]) or "-", f"{sum(errors[b] for b in order[:k]):.4f}",
                     f"{100 * top1:.2f}%", f"{cost(model, s.example).macs / base_macs:.3f}"])
    speed = {}
    with num_threads(args.threads):
        for batch in (1, 64):
            comp = compare_latency(variants, s.example, batch_sizes=(batch,), runs=args.runs, fold_bn=True)
            speed[batch] = {r["model"]: r["ratio"] for r in comp.rows()}
    for row in rows:
        row += [f"{speed[b].get(row[0], 1.0):.2f}x" for b in (1, 64)]
    header = ["variant", "blocks dropped (lowest drop error first)", "sum of drop errors",
              f"top-1 (BN re-estimated, {len(test.dataset)} test images)", "MACs ratio", "speed-up b1", "speed-up b64"]
    return [f"## {key}", "", "Drop error per block: " + ", ".join(f"`{b}` {errors[b]:.4f}" for b in order), "",
            md_table(header, rows), ""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--test-images", type=int, default=None, help="test images per accuracy (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads while timing")
    parser.add_argument("--runs", type=int, default=20, help="interleaved timed rounds (>= 20)")
    parser.add_argument("--out", default=str(RESULTS / "drop_blocks.md"))
    args = parser.parse_args(argv)
    ctx = context(command_line("benchmarks/drop_blocks.py", argv if argv is not None else sys.argv[1:]))
    began = time.perf_counter()
    body = [line for key in args.models for line in run_model(key, args)]
    text = ["# Dropping residual blocks of the trained baselines (no fine-tuning)", "",
            *context_lines(ctx, seconds=time.perf_counter() - began), "",
            "Speed-ups are of BN-folded models against the original, medians of one interleaved run per batch "
            f"size, {args.threads} thread(s); accuracies after BatchNorm re-estimation on the same 16 training "
            "batches, no fine-tuning.", "", *body]
    atomic_write_text(args.out, "\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
