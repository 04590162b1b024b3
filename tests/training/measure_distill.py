"""Measure label-only vs distilled students on the tiny task over several seeds (not a test; prints figures).

Reproduce: .venv/bin/python tests/training/measure_distill.py --seeds 5 --epochs 10 25 --alphas 0 0.5 0.7 0.9
(the setting of tests/training/test_distill.py: teacher TinyNet(16) on 256 samples, student TinyNet(8) on 64).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]

from compress.training import DistillConfig, Teacher, TrainConfig, fit  # noqa: E402
from compress.training.evaluate import top1_accuracy  # noqa: E402
from tiny_training import TinyNet, loader, make_data  # noqa: E402

CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, nargs="+", default=[10, 25], help="student epochs (4 steps each)")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.5, 0.7, 0.9])
    parser.add_argument("--temperature", type=float, default=4.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, test = make_data(256, seed=0), make_data(512, seed=1)
    torch.manual_seed(0)
    teacher = TinyNet(16)
    fit(teacher, loader(train), config=TrainConfig(epochs=12, lr=0.05), device=CPU, verbose=False)
    print(f"teacher test accuracy {top1_accuracy(teacher, loader(test, shuffle=False), device=CPU):.3f}")
    small = TensorDataset(train.tensors[0][:64], train.tensors[1][:64])
    for epochs in args.epochs:
        for alpha in args.alphas:
            accs = []
            for seed in range(args.seeds):
                torch.manual_seed(seed)
                student = TinyNet(8)
                kd = DistillConfig(alpha=alpha, temperature=args.temperature) if alpha > 0 else None
                fit(student, loader(small, batch_size=16), config=TrainConfig(epochs=epochs, lr=0.05), device=CPU,
                    seed=seed, teacher=Teacher(teacher, kd) if kd else None, verbose=False)
                accs.append(top1_accuracy(student, loader(test, shuffle=False), device=CPU))
            print(f"steps {epochs * 4:4d} alpha {alpha:.2f}: " + " ".join(f"{a:.3f}" for a in accs)
                  + f"  mean {sum(accs) / len(accs):.3f}")
    print("command: " + " ".join(["python", *sys.argv]))


if __name__ == "__main__":
    main()
