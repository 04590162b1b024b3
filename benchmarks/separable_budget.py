"""Benchmark (issue 5): how to choose the separable multiplier T per layer, compared at equal MACs, no fine-tuning.

On the Fashion-MNIST small ResNet baseline of the default recipe (cached; trained once if missing), every eligible
3x3 conv is rewritten depthwise-separable, BatchNorm is re-calibrated on the calibration split (no gradients), and
top-1 is measured on all 10,000 test images. Ways to choose T and initialise the factors:

- ``uniform``: the same T in every layer, weight SVD (data-free);
- ``budget``: per layer the smallest T whose relative weight error is within ``max_error`` (data-free);
- ``uniform_data``: the same T everywhere, data-aware SVD (input patch moments of 8 calibration batches);
- ``target_weight``: T allocated across layers for a whole-model ``macs_target``, weight errors (data-free);
- ``target_data``: T allocated for a ``macs_target``, data-aware SVD and expected output errors.

Nothing looks at the test set: the data-aware methods read the 1,024-image calibration split only. Every setting
is compared with the ``uniform`` curve linearly interpolated at the setting's own MACs (and, for the data-aware
allocation, with the ``uniform_data`` curve too), so no method gains by landing on more MACs.

    python benchmarks/separable_budget.py          # ~15 min on 1 CPU thread with the baseline cached

Writes ``benchmarks/results/separable_budget.{json,md}`` and prints the Markdown.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, command_line, context, context_lines, ensure_path, md_table  # noqa: E402

ensure_path()

__all__ = ["SETTINGS", "measure", "interpolate", "compare", "main"]

CALIB_BATCHES = 8
SETTINGS: dict[str, tuple[dict[str, Any], ...]] = {
    "uniform": tuple({"T": t} for t in (2, 3, 4, 5, 6, 7)),
    "budget": tuple({"max_error": e} for e in (0.45, 0.55, 0.65)),
    "uniform_data": tuple({"T": t} for t in (2, 3, 4, 5)),
    "target_weight": tuple({"macs_target": m} for m in (0.5, 0.62)),
    "target_data": tuple({"macs_target": m} for m in (0.45, 0.5, 0.55, 0.62, 0.7)),
}
DATA_AWARE = ("uniform_data", "target_data")


def measure(setup: Any, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """Rewrite a copy of the baseline, calibrate BN, and measure the MACs fraction and top-1."""
    from compress.measurement import cost, evaluate
    from compress.training import calibrate_bn
    from compress.transforms.rewrite.apply import rewrite

    model = copy.deepcopy(setup.baseline)
    calib = list(itertools.islice((x for x, *_ in setup.data.calib), CALIB_BATCHES)) if method in DATA_AWARE else None
    records = rewrite(model, "separable", example_inputs=setup.example, calib=calib, min_channels=16, **params)
    done = [r for r in records if r.skipped is None]
    calibrate_bn(model, setup.data.calib, max_batches=16)
    base = cost(setup.baseline, setup.example).macs
    return {"method": method, "params": params, "layers": len(done),
            "T": {r.layer: r.params.get("T") for r in done},
            "macs_fraction": round(cost(model, setup.example).macs / base, 4),
            "max_weight_error": round(max(r.weight_error for r in done), 4) if done else None,
            "top1": round(evaluate(model, setup.data.test, verbose=False).top1, 4)}


def interpolate(curve: Sequence[dict[str, Any]], macs: float) -> float | None:
    """Top-1 of ``curve`` (rows with ``macs_fraction``, ``top1``) linearly interpolated at ``macs``; ``None``
    outside the curve's MACs range."""
    points = sorted((r["macs_fraction"], r["top1"]) for r in curve)
    for (m0, a0), (m1, a1) in zip(points, points[1:]):
        if m0 - 1e-9 <= macs <= m1 + 1e-9:
            return a0 if m1 == m0 else a0 + (a1 - a0) * (macs - m0) / (m1 - m0)
    return None


def compare(rows: Sequence[dict[str, Any]], curve: Sequence[dict[str, Any]]) -> list[float | None]:
    """Points (top-1, percent) each row gains over ``curve`` interpolated at the row's MACs."""
    out = []
    for r in rows:
        ref = interpolate(curve, r["macs_fraction"])
        out.append(None if ref is None else round(100 * (r["top1"] - ref), 2))
    return out


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def _mean(values: Sequence[float | None]) -> str:
    known = [v for v in values if v is not None]
    return _cell(sum(known) / len(known)) if known else "-"


def _worst(values: Sequence[float | None]) -> str:
    known = [v for v in values if v is not None]
    return _cell(min(known)) if known else "-"


def _verdicts(doc: dict[str, Any]) -> list[str]:
    """One line per non-reference method: does it beat the reference curve at every compared setting?"""
    out = []
    for method in SETTINGS:
        for ref in ("uniform", "uniform_data"):
            key = f"vs_{ref}"
            gains = [r[key] for r in doc["results"][method] if r.get(key) is not None]
            if method in ("uniform", "uniform_data") or not gains:
                continue
            wins = sum(g > 0 for g in gains)
            out.append(f"- `{method}` vs `{ref}`: higher top-1 at {wins} of {len(gains)} settings "
                       f"({_cell(min(gains))} to {_cell(max(gains))} points)")
    return out


def _markdown(doc: dict[str, Any]) -> str:
    base = doc["baseline_top1"]
    layers = list(doc["results"]["uniform"][0]["T"])  # T=2 rewrites every eligible layer
    rows, summary = [], []
    for method in SETTINGS:
        results = doc["results"][method]
        for r in results:
            rows.append([method, ", ".join(f"{k}={v}" for k, v in r["params"].items()),
                         " ".join(str(r["T"].get(n, "d")) for n in layers), f"{r['macs_fraction']:.3f}",
                         f"{100 * r['top1']:.2f}%", _cell(r["vs_uniform"]), _cell(r.get("vs_uniform_data"))])
        vs_data = [r.get("vs_uniform_data") for r in results] if method in DATA_AWARE else []
        summary.append([method, len(results), _mean([r["vs_uniform"] for r in results]),
                        _worst([r["vs_uniform"] for r in results]), _mean(vs_data), _worst(vs_data)])
    lines = ["# Separable rewrite: choosing T per layer, compared at equal MACs (no fine-tuning)", "",
             *context_lines(doc, seconds=doc["seconds"]),
             f"- baseline: `compress:small_resnet` [16, 32, 64] of the default recipe, top-1 **{100 * base:.2f}%** "
             f"on the 10,000 Fashion-MNIST test images; {doc['baseline_macs']:,} MACs; with BN re-calibration "
             f"alone {100 * doc['dense_recalibrated_top1']:.2f}%",
             f"- every eligible 3x3 conv ({len(layers)} convs, min 16 channels) rewritten separable, then BN "
             "re-calibration on the 1,024-image calibration split; top-1 on all 10,000 test images; no fine-tuning",
             f"- data-aware methods read the input patch moments of the first {CALIB_BATCHES} calibration batches "
             "(1,024 images); nothing reads the test set to choose T",
             "- `vs uniform`: top-1 points over the data-free uniform-T curve linearly interpolated at the row's "
             "MACs (the dense model with BN re-calibration is the curve's point at 1.0); `vs uniform_data`: the same "
             "against the data-aware uniform-T curve", "",
             *_verdicts(doc), "",
             "Summary (points at equal MACs):", "",
             md_table(["method", "settings", "mean vs uniform", "worst vs uniform", "mean vs uniform_data",
                       "worst vs uniform_data"], summary), "",
             f"All settings (T per layer in the order {', '.join(f'`{n}`' for n in layers)}; d: kept dense):", "",
             md_table(["method", "setting", "T per layer", "MACs", "top-1", "vs uniform", "vs uniform_data"], rows),
             ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from compress.io import atomic_write_json, atomic_write_text
    from compress.measurement import cost, evaluate
    from compress.training import calibrate_bn
    from quality import load_setup
    from tqdm.auto import tqdm

    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    doc = context(command_line("benchmarks/separable_budget.py", argv))
    began = time.perf_counter()
    setup = load_setup("small_resnet")
    doc["baseline_top1"] = round(evaluate(setup.baseline, setup.data.test, verbose=False).top1, 4)
    doc["baseline_macs"] = cost(setup.baseline, setup.example).macs
    dense = copy.deepcopy(setup.baseline)
    calibrate_bn(dense, setup.data.calib, max_batches=16)
    dense_row = {"macs_fraction": 1.0, "top1": round(evaluate(dense, setup.data.test, verbose=False).top1, 4)}
    jobs = [(m, params) for m, settings in SETTINGS.items() for params in settings]
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in SETTINGS}
    for method, params in tqdm(jobs, desc="settings"):
        results[method].append(measure(setup, method, params))
    for method, rows in results.items():
        for r, gain in zip(rows, compare(rows, results["uniform"] + [dense_row])):
            r["vs_uniform"] = gain
        if method in DATA_AWARE:
            for r, gain in zip(rows, compare(rows, results["uniform_data"] + [dense_row])):
                r["vs_uniform_data"] = gain
    doc["dense_recalibrated_top1"] = dense_row["top1"]
    doc["results"] = results
    doc["seconds"] = round(time.perf_counter() - began, 1)
    text = _markdown(doc)
    atomic_write_json(Path(args.out_dir) / "separable_budget.json", doc)
    atomic_write_text(Path(args.out_dir) / "separable_budget.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
