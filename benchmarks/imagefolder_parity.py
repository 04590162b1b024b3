"""Benchmark: the same recipe on Fashion-MNIST read from its IDX files and from PNGs in class folders.

A user's data usually arrives as an image folder, not as IDX files. This writes Fashion-MNIST (the IDX files of
Debian's ``dataset-fashion-mnist``) as grey PNGs into ``train/<class>/`` and ``test/<class>/`` (class folders
named ``00``..``09`` so ImageFolder's sorted class order is the IDX label order; files named by their IDX
position, so each class' files are in IDX order and the seeded stratified val/calibration draws pick the same
images), then runs one recipe three times through ``python -m compress.run``: with ``data.source:
fashion-mnist``; with ``data.source: imagefolder`` (``resize: 28``, ``channels: 1`` and the IDX source's
mean/std), training its own baseline; and on the image folder again with the first run's baseline weights as
its checkpoint. Each prunes to half the MACs, re-calibrates BN and fine-tunes; the table compares the reports'
top-1 at every step.

The pixels are bit-identical (tests/data/test_build.py checks it), so the same weights must score the same on
both test sets; and since the training split is put in class-major order before the seeded shuffle
(:func:`compress.data.split.class_major`), both sources train on the same batches: all three runs should agree
at every step (measured 2026-12-07: identical to the last digit; before that ordering, the two trained
baselines differed by 0.33 points, as two training runs with different batch orders do).

Usage::

    python benchmarks/imagefolder_parity.py                    # writes benchmarks/results/imagefolder_parity.md
    python benchmarks/imagefolder_parity.py --finetune-epochs 3
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import RESULTS, command_line, context, context_lines, md_table, run_isolated  # noqa: E402

LOG = logging.getLogger("benchmarks.imagefolder_parity")
TOLERANCE_PTS = 0.3  # issue 18: the ImageFolder run's accuracy within 0.3 points of the IDX run's


def write_class_folders(idx_root: Path, out: Path) -> Path:
    """Write the four IDX files under ``idx_root`` as PNGs ``out/{train,test}/<label:02d>/<position:05d>.png``.

    Written into a sibling temporary folder and renamed into place, so a killed run never leaves a half-written
    ``out``; an existing complete ``out`` is reused.
    """
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from compress.data.idx import read_idx
    from compress.data.sources import FASHION_MNIST_FILES, _find_idx

    if (out / ".complete").is_file():
        return out
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for split, (images_key, labels_key) in {"train": ("train_images", "train_labels"),
                                            "test": ("test_images", "test_labels")}.items():
        images = read_idx(_find_idx(idx_root, FASHION_MNIST_FILES[images_key])).numpy().astype(np.uint8)
        labels = read_idx(_find_idx(idx_root, FASHION_MNIST_FILES[labels_key])).tolist()
        for label in sorted(set(labels)):
            (partial / split / f"{label:02d}").mkdir(parents=True)
        for i, (image, label) in enumerate(tqdm(list(zip(images, labels)), desc=f"PNG {split}", leave=False)):
            Image.fromarray(image).save(partial / split / f"{label:02d}" / f"{i:05d}.png")
    (partial / ".complete").write_text("ok\n")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def recipes(png_root: Path, finetune_epochs: int, idx_baseline: Path) -> dict[str, dict[str, Any]]:
    """recipes/prune50_fmnist.yaml with ``finetune_epochs`` (and no latency), per data source:

    - ``idx``: the IDX files (its baseline is the default recipe's cached one);
    - ``imagefolder``: the PNG class folders, a baseline trained on them;
    - ``imagefolder-idx-weights``: the PNG class folders, the ``idx`` run's baseline weights as a checkpoint
      (its baseline top-1 must equal the ``idx`` run's: same weights, same pixels).
    """
    import yaml

    from compress.data import DataConfig
    from compress.data.sources import normalization

    base = yaml.safe_load((ROOT / "recipes" / "prune50_fmnist.yaml").read_text())
    for step in base["steps"]:
        if "finetune" in step:
            step["finetune"]["epochs"] = finetune_epochs
        if "report" in step:
            step["report"] = {"latency": False}
    mean, std = normalization(DataConfig())
    folder = {**base, "data": {**base["data"], "source": "imagefolder", "root": str(png_root), "resize": 28,
                               "channels": 1, "mean": list(mean), "std": list(std)}}
    same = {**folder, "model": {**base["model"], "checkpoint": str(idx_baseline)}}
    return {"idx": base, "imagefolder": folder, "imagefolder-idx-weights": same}


def run(name: str, recipe: dict[str, Any], out_root: Path, timeout: float) -> dict[str, Any]:
    """Run ``recipe`` in a subprocess; its steps' top-1 from report.json (or the failure)."""
    import yaml

    from compress.io import atomic_write_text

    out = out_root / name
    path = out_root / f"{name}.yaml"
    atomic_write_text(path, yaml.safe_dump(recipe, sort_keys=False))
    args = ["-m", "compress.run", str(path), "--out", str(out), "--force", "--quiet"]
    done = run_isolated(args, timeout=timeout)
    row = {"name": name, "command": "python " + " ".join(args), "status": done.status,
           "seconds": round(done.seconds, 1)}
    if done.status != "ok":
        return {**row, "stderr": done.stderr}
    report = json.loads((out / "report.json").read_text())
    row["top1"] = {s["name"]: s["metrics"]["top1"] for s in report["steps"]}
    row["sizes"] = report["data"].get("sizes")
    row["baseline_origin"] = json.loads((out / "run.json").read_text()).get("baseline", {}).get("source")
    return row


def table(rows: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """The per-step top-1 of every run, and the verdicts: each ImageFolder run against the IDX run, at the
    baseline and after the last step."""
    idx, others = rows[0], rows[1:]
    steps = list(idx["top1"])
    lines = []
    for step in steps:
        a = idx["top1"][step]
        cells = [step, f"{a:.2%}"]
        for r in others:
            b = r["top1"].get(step)
            cells.append("—" if b is None else f"{b:.2%} ({(b - a) * 100:+.2f})")
        lines.append(cells)
    verdicts = []
    for r in others:
        for step in ("baseline", steps[-1]):
            diff = abs(r["top1"][step] - idx["top1"][step]) * 100
            verdicts.append(f"{r['name']}, {step}: |difference| {diff:.2f} points: "
                            + ("MET" if diff <= TOLERANCE_PTS else "NOT MET") + f" (tolerance {TOLERANCE_PTS} points)")
    header = ("step", "IDX files top-1", *(f"{r['name']} top-1 (points vs IDX)" for r in others))
    return md_table(header, lines), verdicts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--idx-root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--png-root", default=str(Path.home() / ".cache" / "compress" / "fashion-mnist-png"),
                   help="where the class folders are written (reused when complete)")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench" / "imagefolder_parity"))
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--timeout", type=float, default=3600.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from compress.io import atomic_write_text

    began = time.perf_counter()
    command = command_line("benchmarks/imagefolder_parity.py", argv)
    ctx = context(command)
    png = write_class_folders(Path(args.idx_root), Path(args.png_root))
    out_root = Path(args.out)
    out_root.mkdir(parents=True, exist_ok=True)
    made = recipes(png, args.finetune_epochs, out_root / "idx" / "baseline.pt")
    rows = [run(name, recipe, out_root, args.timeout) for name, recipe in made.items()]  # idx first: its baseline
    seconds = time.perf_counter() - began
    text = ["# Fashion-MNIST from IDX files vs from PNG class folders (issue 18)", "", __doc__.split("\n\n")[1], "",
            *context_lines(ctx, seconds=seconds), ""]
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        text += [f"- **{r['name']} run FAILED** ({r['status']}): `{r['command']}`\n\n```\n{r['stderr']}\n```"
                 for r in failed]
    else:
        body, verdicts = table(rows)
        text += ["- runs: " + "; ".join(f"{r['name']}: `{r['command']}` ({r['seconds']} s, sizes {r['sizes']})"
                                          for r in rows), "", body, "", *[f"- {v}" for v in verdicts]]
    atomic_write_text(RESULTS / "imagefolder_parity.md", "\n".join(text) + "\n")
    print(json.dumps({"section": "imagefolder_parity", "command": command, "seconds": round(seconds, 1),
                      "rows": rows}))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
