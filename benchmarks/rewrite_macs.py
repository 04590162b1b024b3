"""Whole-model MACs and parameters before/after each rewrite kind on a random-init torchvision resnet18 (32 px).

Every eligible conv is rewritten (``min_channels`` 3, so the 7x7 stem takes the dilated rewrite). Totals come
from :func:`compress.measurement.cost` (torch-pruning's counting conventions: bias adds, BatchNorm, ReLU and
pooling included); the per-layer figures summed from the rewrite records count conv MACs by formula only.
Random weights make the reconstruction errors pessimistic (trained weights are more structured), so only the
cost columns say something general.

Reproduce: ``.venv/bin/python benchmarks/rewrite_macs.py``
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compress.measurement import cost  # noqa: E402
from compress.transforms import rewrite  # noqa: E402

__all__: list[str] = []

SETTINGS = [
    ("grouped", {"groups": 2}),
    ("grouped", {"groups": 4}),
    ("separable", {"T": 1}),
    ("separable", {"T": 3}),
    ("shuffle", {"groups": 4}),
    ("dilated", {}),
    ("bottleneck", {"rank_ratio": 0.5}),
    ("bottleneck", {"rank_ratio": 0.25}),
]


def main() -> None:
    torch.set_num_threads(1)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    base = cost(torchvision.models.resnet18(weights=None, num_classes=10).eval(), x)
    print(f"resnet18 (random init, 32 px, 10 classes): {base.macs / 1e6:.2f} M MACs, {base.params / 1e6:.3f} M params")
    print(f"{'kind':<11}{'options':<22}{'layers':>7}{'MACs M':>10}{'ratio':>8}{'params M':>10}{'ratio':>8}"
          f"{'mean w.err':>12}{'seconds':>9}")
    for kind, options in SETTINGS:
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
        start = time.perf_counter()
        records = rewrite(model, kind, example_inputs=x, min_channels=3, **options)
        seconds = time.perf_counter() - start
        done = [r for r in records if r.skipped is None]
        after = cost(model, x)
        err = sum(r.weight_error for r in done) / max(len(done), 1)
        opts = ",".join(f"{k}={v}" for k, v in options.items()) or "-"
        print(f"{kind:<11}{opts:<22}{len(done):>7}{after.macs / 1e6:>10.2f}{after.macs / base.macs:>8.3f}"
              f"{after.params / 1e6:>10.3f}{after.params / base.params:>8.3f}{err:>12.3f}{seconds:>9.1f}")
    print("command: .venv/bin/python benchmarks/rewrite_macs.py")


if __name__ == "__main__":
    main()
