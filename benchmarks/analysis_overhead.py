"""How much slower is ``compress.analysis.analyze`` than plain inference, and does its memory stay flat?

For each batch count N, a fresh child process (so peak-RSS readings are clean) times a plain ``no_grad``
inference pass over N batches and ``analyze`` over the same N batches (best of ``--repeats``, interleaved),
and reads the process' peak RSS after each (``resource.getrusage``; on CUDA also
``torch.cuda.max_memory_allocated``). The loader yields one pre-generated batch N times, so the data itself
does not grow with N. Prints a table and the command that reproduces it.

    python benchmarks/analysis_overhead.py                 # resnet18, 64 px, batch 16, N = 4, 8, 16
    python benchmarks/analysis_overhead.py --quick         # batch 8, one repeat: < 1 minute on 2 CPU cores
    python benchmarks/analysis_overhead.py --model mobilenet_v2 --device cuda
"""
from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18", help="torchvision model name (weights=None)")
    p.add_argument("--size", type=int, default=64, help="input height/width in pixels")
    p.add_argument("--batch", type=int, default=16, help="images per batch")
    p.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16], help="batch counts N to compare")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per N (best is reported)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="batch 8, one repeat")
    p.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.repeats = 8, 1
    return args


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _child(args: argparse.Namespace) -> dict:
    import torch
    import torchvision

    sys.path.insert(0, str(ROOT))
    from compress.analysis import analyze

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = getattr(torchvision.models, args.model)(weights=None).eval().to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    loader = [x] * args.child
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def plain() -> None:
        with torch.no_grad():
            for batch in loader:
                model(batch)

    plain()  # warm-up (allocator, kernels, thread pool)
    result = {"plain_s": float("inf"), "analyze_s": float("inf")}
    for _ in range(args.repeats):
        sync(); t = time.perf_counter(); plain(); sync()
        result["plain_s"] = min(result["plain_s"], time.perf_counter() - t)
        result.setdefault("rss_plain_mb", _peak_rss_mb())
        if device.type == "cuda":
            result.setdefault("cuda_plain_mb", torch.cuda.max_memory_allocated() / 2**20)
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter(); analysis = analyze(model, loader, verbose=False); sync()
        result["analyze_s"] = min(result["analyze_s"], time.perf_counter() - t)
        result.setdefault("rss_analyze_mb", _peak_rss_mb())
        if device.type == "cuda":
            result.setdefault("cuda_analyze_mb", torch.cuda.max_memory_allocated() / 2**20)
    state_mb = sum(v.numel() * v.element_size() for layer in analysis.layers
                   for v in [analysis.correlation(layer)] if analysis.has_correlation(layer)) / 2**20
    result.update(threads=torch.get_num_threads(), layers=len(analysis.layers), cov_state_mb=state_mb)
    return result


def _command(args: argparse.Namespace) -> str:
    parts = ["python", "benchmarks/analysis_overhead.py", "--model", args.model, "--size", str(args.size),
             "--batch", str(args.batch), "--batches", *map(str, args.batches), "--repeats", str(args.repeats),
             "--device", args.device]
    if args.threads:
        parts += ["--threads", str(args.threads)]
    return " ".join(shlex.quote(p) for p in parts)


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    if args.child:
        print(json.dumps(_child(args)))
        return
    print(f"analysis overhead: {args.model}, {args.size}px, batch {args.batch}, device {args.device}, "
          f"best of {args.repeats}")
    cuda = args.device.startswith("cuda")
    head = (f"{'N':>4} {'plain s':>9} {'analyze s':>10} {'ratio':>6} {'peakRSS plain MB':>17} "
            f"{'peakRSS +analyze MB':>20}")
    print(head + (f" {'cuda plain MB':>14} {'cuda analyze MB':>16}" if cuda else ""))
    extra = []
    for n in args.batches:
        cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--child", str(n)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
        r = json.loads(out.strip().splitlines()[-1])
        line = (f"{n:>4} {r['plain_s']:>9.3f} {r['analyze_s']:>10.3f} {r['analyze_s'] / r['plain_s']:>6.2f} "
                f"{r['rss_plain_mb']:>17.0f} {r['rss_analyze_mb']:>20.0f}")
        if cuda:
            line += f" {r['cuda_plain_mb']:>14.0f} {r['cuda_analyze_mb']:>16.0f}"
        print(line, flush=True)
        extra = [f"torch threads {r['threads']}, conv layers {r['layers']}, "
                 f"float64 covariance state {r['cov_state_mb']:.1f} MB"]
    print(*extra)
    print("reproduce:", _command(args) + (" --quick" if args.quick else ""))


if __name__ == "__main__":
    main()
