"""Run by test_ddp.py under ``torchrun --nproc_per_node=2``: fit the tiny net data-parallel on CPU (gloo).

Usage: python -m torch.distributed.run --nproc_per_node=2 tests/training/ddp_fit_script.py OUTDIR
Writes OUTDIR/rank{R}.pt (final state dicts), OUTDIR/rank{R}_kd.pt (after feature distillation) and, on rank 0,
OUTDIR/history.json (per-step global losses).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]

from compress.training import DistillConfig, Teacher, TrainConfig, fit  # noqa: E402
from compress.training import distributed as D  # noqa: E402
from tiny_training import TinyNet, loader, make_data  # noqa: E402

SEED = 11
CONFIG = TrainConfig(epochs=2, lr=0.05, weight_decay=5e-4)
GLOBAL_BATCH = 32


def main(out: Path) -> None:
    torch.set_num_threads(1)
    rank, world, _ = D.init_distributed(backend="gloo")  # CPU training even where GPUs exist
    torch.manual_seed(0)
    model = TinyNet(4, bn=False)  # no BN: per-rank batch statistics would differ from a single process
    hist = fit(model, loader(make_data(128), batch_size=GLOBAL_BATCH), config=CONFIG, device="cpu", seed=SEED,
               verbose=False)
    torch.save(model.state_dict(), out / f"rank{rank}.pt")
    if rank == 0:
        (out / "history.json").write_text(json.dumps({"world": world, "step_loss": hist.step_loss}))
    # Feature distillation: the 1x1 adapter lives outside DDP and needs its own gradient all-reduce.
    teacher = TinyNet(8, bn=False).eval()
    fit(model, loader(make_data(128), batch_size=GLOBAL_BATCH), config=CONFIG, device="cpu", seed=SEED,
        teacher=Teacher(teacher, DistillConfig(alpha=0.5, features=("conv2",))), verbose=False)
    torch.save(model.state_dict(), out / f"rank{rank}_kd.pt")
    D.destroy()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
