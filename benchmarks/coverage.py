"""Coverage: does every torchvision classification model survive analyze, prune and each rewrite kind?

For each model of ``torchvision.models.list_models(module=torchvision.models)`` (random weights, 10 classes),
a fresh subprocess with a time limit (a hang or crash costs one row, not the sweep):

1. ``analyze`` on one batch of 2 images (64 px; 224 px where the model needs it: ViT / Swin / MaxViT);
2. ``prune`` a copy at channel ratio 0.3 (l2 importance, with the analysis), then a forward check;
3. each rewrite kind on its own fresh copy — grouped (2 groups), separable (T=2), shuffle (2 groups), dilated
   (default dilation, only K >= 5 convs are eligible), bottleneck (rank ratio 0.5) — then a forward check
   (``--layers N``: only the N smallest eligible convs of each kind).

A forward check passes when the output has shape ``(2, 10)`` and is finite. A kind with no eligible conv is
``n/a``. Models estimated to need more than ``--memory-gib`` are skipped and named.

    python benchmarks/coverage.py --quick        # 11 representative models
    python benchmarks/coverage.py                # every torchvision classification model

Writes ``benchmarks/results/coverage.json`` and prints one JSON line (the same data) last.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, command_line, context, ensure_path, run_isolated  # noqa: E402

ensure_path()
from compress.transforms.rewrite.registry import config_for_kind, kinds  # noqa: E402

__all__ = ["QUICK", "KINDS", "model_kwargs", "input_size", "estimated_gib", "check_model", "main"]

QUICK = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf", "shufflenet_v2_x0_5",
         "squeezenet1_0", "densenet121", "convnext_tiny", "googlenet", "vgg11_bn"]
# Every registered rewrite kind, with the options its config declares as representative.
KINDS: dict[str, dict[str, Any]] = {kind: config_for_kind(kind).example_options for kind in kinds()}
FIXED_224 = ("vit_", "maxvit_", "swin_")  # position embeddings / window sizes tied to 224 px
PEAK_FACTOR = 6  # original + pruned/rewritten copy + tp's graph and counting copy, in units of fp32 params
RATIO = 0.3
MIN_CHANNELS = 16  # the rewrite applier's default
TRIES = 3  # --layers N: batches of the N smallest eligible convs tried until one is rewritten


def model_kwargs(name: str) -> dict[str, Any]:
    """Builder arguments: random weights, 10 classes, no auxiliary heads."""
    extra = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    return {"weights": None, "num_classes": 10, **extra}


def input_size(name: str, default: int = 64) -> int:
    """Input side in px: 224 where the architecture fixes it, at least 96 for Inception v3."""
    if name.startswith(FIXED_224):
        return 224
    return max(default, 96) if name == "inception_v3" else default


def estimated_gib(name: str) -> float:
    """Peak memory estimate from the parameter count (counted on the meta device when the builder allows)."""
    import torchvision

    try:
        with torch.device("meta"):
            model = torchvision.models.get_model(name, **model_kwargs(name))
    except (NotImplementedError, RuntimeError):  # builders that compute widths from tensor data
        model = torchvision.models.get_model(name, **model_kwargs(name))
    return PEAK_FACTOR * 4 * sum(p.numel() for p in model.parameters()) / 2**30


def _forward_ok(model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        out = model.eval()(x)
    if tuple(out.shape) != (x.shape[0], 10):
        raise RuntimeError(f"output shape {tuple(out.shape)}, expected ({x.shape[0]}, 10)")
    if not torch.isfinite(out).all():
        raise RuntimeError("non-finite output")


def _attempt(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        row = {"status": "ok", **fn()}
    except Exception as err:  # noqa: BLE001 - every failure is a table cell, the sweep goes on
        first = str(err).splitlines()[0][:160] if str(err) else ""
        row = {"status": "error", "error": f"{type(err).__name__}: {first}", "trace": traceback.format_exc(limit=-4)}
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def _prune(model: nn.Module, x: torch.Tensor, analysis: Any) -> dict[str, Any]:
    from compress.transforms.prune.pruner import prune

    twin = copy.deepcopy(model)
    result = prune(twin, x[:1], ratio=RATIO, importance="l2", analysis=analysis)
    _forward_ok(twin, x)
    return {"macs_before": result.macs_before, "macs_after": result.macs_after, "dead_channels_removed":
            result.dead.channels_removed}


def _eligible(model: nn.Module, kind: str) -> list[str]:
    """Names of plain convs the kind can rewrite (the applier's own rules, at its default ``min_channels``)."""
    rules = config_for_kind(kind)
    return [n for n, m in model.named_modules() if type(m) is nn.Conv2d and min(m.in_channels, m.out_channels)
            >= MIN_CHANNELS and rules.eligibility(m) is None]


def _batches(model: nn.Module, names: list[str], limit: int | None) -> list[list[str] | None]:
    """Candidate layer lists to try, smallest convs first: ``[None]`` (all) without a limit, else up to
    :data:`TRIES` lists of ``limit`` names each, in model order.

    Small layers keep a quick sweep quick (the shuffle rewrite's CP decomposition grows fast with width) while
    still exercising every kind's planning, module swap, permutation folding and forward pass on the model. The
    smallest layers are the likeliest to be declined (a rewrite that would grow them is skipped), hence the
    next batch when a whole batch is declined.
    """
    if limit is None or len(names) <= limit:
        return [None]
    order = sorted(names, key=lambda n: (model.get_submodule(n).weight.numel(), names.index(n)))
    chunks = [set(order[i:i + limit]) for i in range(0, min(len(order), TRIES * limit), limit)]
    return [[n for n in names if n in chunk] for chunk in chunks]


def _rewrite(model: nn.Module, x: torch.Tensor, kind: str, analysis: Any, limit: int | None) -> dict[str, Any]:
    from compress.transforms.rewrite.apply import rewrite

    declined: list[str] = []
    for picked in _batches(model, _eligible(model, kind), limit):
        twin = copy.deepcopy(model)
        records = rewrite(twin, kind, layers=picked, example_inputs=x[:1], analysis=analysis,
                          min_channels=MIN_CHANNELS, **KINDS[kind])
        done = [r for r in records if r.skipped is None]
        declined += sorted({r.skipped for r in records if r.skipped})
        if done:
            _forward_ok(twin, x)
            errs = [r.output_error for r in done if r.output_error is not None]
            return {"rewritten": len(done), "skipped": len(records) - len(done),
                    "layers": "all" if picked is None else len(picked), "declined": declined[:3],
                    "max_layer_output_error": round(max(errs), 4) if errs else None}
    return {"rewritten": 0, "declined": declined[:3]}


def check_model(name: str, size: int, *, limit: int | None = None) -> dict[str, Any]:
    """Analyze, prune and rewrite one model in this process; one row of results.

    Each stage's result is also printed as a JSON line as soon as it is known, so a parent that kills a hung
    child still has the stages that finished. ``limit``: rewrite only ``limit`` eligible convs per kind, the
    smallest (see :func:`_batches`).
    """
    import torchvision

    from compress.analysis import analyze

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, **model_kwargs(name)).eval()
    x = torch.randn(2, 3, size, size)
    row: dict[str, Any] = {"name": name, "input": size}
    holder: dict[str, Any] = {}

    def run_analysis() -> dict[str, Any]:
        holder["analysis"] = analyze(model, [x], max_batches=1, verbose=False)
        return {"layers": len(holder["analysis"].layers)}

    stages: dict[str, Callable[[], dict[str, Any]]] = {
        "analyze": run_analysis, "prune": lambda: _prune(model, x, holder.get("analysis")),
        **{kind: (lambda kind=kind: _rewrite(model, x, kind, holder.get("analysis"), limit)) for kind in KINDS}}
    for stage, fn in stages.items():
        row[stage] = _attempt(fn)
        print(json.dumps({"partial": stage, **row}), flush=True)
    return row


def _sweep(names: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    from tqdm import tqdm

    rows = []
    for name in tqdm(names, desc="coverage", leave=False, disable=not args.verbose):
        need = estimated_gib(name)
        if need > args.memory_gib:
            rows.append({"name": name, "status": f"skipped: needs ~{need:.0f} GiB > {args.memory_gib:g} GiB"})
            continue
        size = input_size(name, args.size)
        child = [__file__, "--child", name, "--size", str(size), "--threads", str(args.threads)]
        done = run_isolated(child + (["--layers", str(args.layers)] if args.layers else []), timeout=args.timeout)
        if done.data is not None:  # complete row, or the stages finished before a timeout / crash
            row = {k: v for k, v in done.data.items() if k != "partial"}
            for stage in ("analyze", "prune", *KINDS):
                row.setdefault(stage, {"status": done.status if done.status != "ok" else "missing"})
            rows.append({**row, "status": "ran" if done.status == "ok" else done.status,
                         "seconds": round(done.seconds, 1)})
        else:
            rows.append({"name": name, "input": size, "status": f"{done.status}: {done.stderr.splitlines()[-1:]}",
                         "seconds": round(done.seconds, 1)})
    return rows


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    p.add_argument("--models", nargs="+", help="model names (overrides --quick)")
    p.add_argument("--size", type=int, default=64, help="input px (224 for ViT/Swin/MaxViT regardless)")
    p.add_argument("--memory-gib", type=float, default=24.0, help="skip models estimated to need more")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per model before it counts as hung")
    p.add_argument("--threads", type=int, default=1, help="torch threads in each model's subprocess")
    p.add_argument("--layers", type=int, default=None,
                   help="rewrite only this many eligible convs per kind, the smallest (default: all; --quick: 2)")
    p.add_argument("--out", default=str(RESULTS / "coverage.json"))
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: check one model, print its JSON row
    args = p.parse_args(argv)
    if args.quick:
        args.layers = args.layers or 2
        args.timeout = min(args.timeout, 120.0)
    return args


def main(argv: list[str] | None = None) -> int:
    import torchvision

    from compress.io import atomic_write_json

    argv = sys.argv[1:] if argv is None else argv
    args = _args(argv)
    if args.child:
        torch.set_num_threads(args.threads)
        print(json.dumps(check_model(args.child, args.size, limit=args.layers)))
        return 0
    names = args.models or (QUICK if args.quick else torchvision.models.list_models(module=torchvision.models))
    out = {"section": "coverage", "quick": args.quick and not args.models,
           **context(command_line("benchmarks/coverage.py", argv)), "ratio": RATIO, "kinds": KINDS,
           "timeout_s": args.timeout, "memory_gib": args.memory_gib, "layers_per_kind": args.layers or "all"}
    began = time.perf_counter()
    out["rows"] = _sweep(names, args)
    out["seconds"] = round(time.perf_counter() - began, 1)
    atomic_write_json(Path(args.out), out)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
