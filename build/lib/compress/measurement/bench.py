"""Command-line latency comparison of torchvision architectures (a benchmark, not a test).

Example::

    python -m compress.measurement.bench resnet18 mobilenet_v2 --device cuda --dtype bfloat16 \\
        --channels-last --batch-sizes 1 64 --size 224

The first model is the baseline; every other is timed interleaved with it and gets a verdict line.
Models are built with ``weights=None`` (timing does not depend on the weights' values).
"""
from __future__ import annotations

import argparse
import shlex
import sys

import torch
import torchvision

from .cost import cost
from .latency import compare_latency

__all__ = ["main"]


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m compress.measurement.bench", description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="torchvision model names, baseline first")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    p.add_argument("--size", type=int, default=224, help="input side in pixels")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before timing")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Print per-model MACs and the interleaved latency table; returns the exit status."""
    args = _args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    x = torch.randn(1, 3, args.size, args.size)
    models = {name: getattr(torchvision.models, name)(weights=None).eval() for name in args.models}
    for name, m in models.items():
        c = cost(m, x)
        print(f"{name:<24} params {c.params / 1e6:8.2f}M  MACs {c.macs / 1e9:8.3f}G")
    comp = compare_latency(models, x, device=args.device, batch_sizes=tuple(args.batch_sizes), dtype=args.dtype,
                           channels_last=args.channels_last, compile=args.compile, runs=args.runs, verbose=True)
    s = comp.settings
    print(f"device {s.device}  dtype {s.dtype}  channels_last {s.channels_last}  threads {s.threads}  "
          f"runs {s.runs}  warmup {s.warmup}")
    if args.device.startswith("cuda"):
        print(f"gpu {torch.cuda.get_device_name()}  torch {torch.__version__}")
    for name in comp.names:
        for batch, st in comp.results[name].stats.items():
            print(f"{name:<24} batch {batch:>4}: median {st.median_ms:9.3f} ms  IQR {st.iqr_ms:7.3f} ms")
    for row in comp.rows():
        print(f"{row['model']} vs {comp.names[0]}, batch {row['batch']}: {row['verdict']}")
    print("reproduce: python -m compress.measurement.bench " + " ".join(shlex.quote(a) for a in
                                                                       (argv if argv is not None else sys.argv[1:])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
