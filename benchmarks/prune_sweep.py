"""Sweep: prune every torchvision classification model at one channel ratio and report what happened.

For each model of ``torchvision.models.list_models(module=torchvision.models)`` (random weights, 10 classes) it
runs :func:`compress.transforms.prune.pruner.prune` in a fresh subprocess (a hang or crash costs one row, not the
sweep), checks that the pruned model still runs forward, and prints a table: name, ok / error / timeout, MACs
before / after (tp's counter at the input size used), seconds. Models whose estimated peak memory exceeds
``--memory-gib`` (parameters counted on the meta device, times a peak factor) are skipped and named.

Usage::

    python benchmarks/prune_sweep.py --quick          # a representative subset, ~minutes on a laptop CPU
    python benchmarks/prune_sweep.py                  # all models (long on CPU)
    python benchmarks/prune_sweep.py --models resnet18,vit_b_32 --ratio 0.5
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
import torchvision
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from compress.io import atomic_write_json  # noqa: E402
from compress.transforms.prune.pruner import prune  # noqa: E402

__all__ = ["QUICK", "sweep", "main"]

QUICK = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x0_5", "squeezenet1_1", "efficientnet_b0",
         "regnet_y_400mf", "mnasnet0_5", "googlenet", "convnext_tiny", "vit_b_32"]
PEAK_FACTOR = 4  # model + tp's deep copy for counting + dependency graph + temporaries, in units of fp32 params
FIXED_224 = ("vit_", "maxvit_", "swin_")  # position embeddings / window sizes tied to 224 px


def _kwargs(name: str) -> dict:
    extra = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    return {"weights": None, "num_classes": 10, **extra}


def _input_size(name: str, default: int) -> int:
    if name.startswith(FIXED_224):
        return 224
    return max(default, 96) if name == "inception_v3" else default  # inception needs >= 75 px


def _estimated_gib(name: str) -> float:
    try:  # parameters counted without allocating them
        with torch.device("meta"):
            model = torchvision.models.get_model(name, **_kwargs(name))
    except NotImplementedError:  # builders that compute widths from tensor data (RegNet): build for real
        model = torchvision.models.get_model(name, **_kwargs(name))
    return PEAK_FACTOR * 4 * sum(p.numel() for p in model.parameters()) / 2**30


def _run_one(name: str, ratio: float, size: int) -> dict:
    model = torchvision.models.get_model(name, **_kwargs(name)).eval()
    x = torch.randn(1, 3, size, size)
    start = time.perf_counter()
    try:
        result = prune(model, x, ratio=ratio)
        with torch.no_grad():
            out = model(x)
        if out.shape != (1, 10):
            raise RuntimeError(f"pruned output shape {tuple(out.shape)}, expected (1, 10)")
        row = {"status": "ok", "macs_before": result.macs_before, "macs_after": result.macs_after,
               "params_before": result.params_before, "params_after": result.params_after}
    except Exception as err:  # noqa: BLE001 - the sweep reports every failure and goes on
        row = {"status": f"error: {type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}",
               "trace": traceback.format_exc(limit=-3)}
    row.update(name=name, input=size, seconds=round(time.perf_counter() - start, 2))
    return row


def _isolated(name: str, ratio: float, size: int, timeout: float) -> dict:
    """:func:`_run_one` in a subprocess with a time limit."""
    command = [sys.executable, __file__, "--worker", name, "--ratio", str(ratio), "--size", str(size),
               "--threads", str(torch.get_num_threads())]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"name": name, "input": size, "status": f"timeout > {timeout:g} s", "seconds": round(timeout, 1)}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:120]
        return {"name": name, "input": size, "status": f"crash (exit {done.returncode}): {tail}",
                "seconds": round(time.perf_counter() - start, 2)}
    return json.loads(lines[-1])


def sweep(names: list[str], *, ratio: float, size: int, memory_gib: float, timeout: float,
          verbose: bool = True) -> list[dict]:
    """Prune each model in ``names`` (each in its own subprocess); one result row per model, skipped ones included."""
    rows = []
    for name in tqdm(names, desc="models", disable=not verbose, leave=False):
        need = _estimated_gib(name)
        if need > memory_gib:
            rows.append({"name": name, "status": f"skipped: needs ~{need:.0f} GiB > {memory_gib:g} GiB",
                         "seconds": 0.0})
            continue
        rows.append(_isolated(name, ratio, _input_size(name, size), timeout))
    return rows


def _mmacs(value: int | None) -> str:
    return "" if value is None else f"{value / 1e6:,.1f}"


def table(rows: list[dict]) -> str:
    """Markdown table of the sweep."""
    lines = ["| model | input | status | MMACs before | MMACs after | after/before | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        frac = f"{r['macs_after'] / r['macs_before']:.3f}" if r.get("macs_before") else ""
        lines.append(f"| {r['name']} | {r.get('input', '')} | {r['status']} | {_mmacs(r.get('macs_before'))} | "
                     f"{_mmacs(r.get('macs_after'))} | {frac} | {r['seconds']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--models", help="comma-separated model names (overrides --quick)")
    parser.add_argument("--ratio", type=float, default=0.3, help="channel ratio to prune (default 0.3)")
    parser.add_argument("--size", type=int, default=64, help="input size in px (224 for ViT/Swin/MaxViT)")
    parser.add_argument("--memory-gib", type=float, default=24.0, help="skip models estimated to need more")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per model before it counts as hung")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "prune_sweep.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: prune one model, print its JSON row
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(_run_one(args.worker, args.ratio, args.size)))
        return 0
    names = (args.models.split(",") if args.models else
             QUICK if args.quick else torchvision.models.list_models(module=torchvision.models))
    rows = sweep(names, ratio=args.ratio, size=args.size, memory_gib=args.memory_gib, timeout=args.timeout)
    command = "python benchmarks/prune_sweep.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    ok = sum(r["status"] == "ok" for r in rows)
    skipped = [r["name"] for r in rows if r["status"].startswith("skipped")]
    print(table(rows))
    print(f"\n{ok}/{len(rows)} ok at channel ratio {args.ratio}; skipped (memory): {', '.join(skipped) or 'none'}; "
          f"torch {torch.__version__}, torchvision {torchvision.__version__}, {args.threads} thread(s)")
    print(f"reproduce: {command.strip()}")
    atomic_write_json(args.out, {"command": command.strip(), "ratio": args.ratio, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
