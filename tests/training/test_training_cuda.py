"""CUDA paths: bf16 autocast, channels-last, checkpoint/resume and BN calibration on a GPU."""
from __future__ import annotations

import copy

import pytest
import torch

from compress.training import Checkpoint, DistillConfig, Teacher, TrainConfig, calibrate_bn, fit
from compress.training.evaluate import top1_accuracy
from tiny_training import TinyNet, loader, make_data

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
GPU = torch.device("cuda")


class Killed(Exception):
    pass


def test_amp_channels_last_distillation_learns_on_gpu():
    train, test = make_data(256), make_data(256, seed=1)
    teacher = TinyNet(16)
    fit(teacher, loader(train), config=TrainConfig(epochs=10), device=GPU, verbose=False)
    student = TinyNet(8)
    hist = fit(student, loader(train), val_loader=loader(test, shuffle=False), config=TrainConfig(epochs=10),
               device=GPU, teacher=Teacher(teacher, DistillConfig(alpha=0.7, features=("conv2",))), verbose=False)
    assert all(torch.isfinite(torch.tensor(hist.step_loss)))
    assert top1_accuracy(student, loader(test, shuffle=False), device=GPU, amp=True) > 0.8
    assert student.conv2.weight.is_cuda and student.conv2.weight.is_contiguous()  # channels-last undone


def test_resume_is_bit_identical_on_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    init = TinyNet(4, dropout=0.3)
    a, b = copy.deepcopy(init), copy.deepcopy(init)
    config = TrainConfig(steps=13, checkpoint_every=3)

    def run(model, **kw):
        return fit(model, loader(make_data(80), batch_size=16), config=config, device=GPU, seed=3, verbose=False,
                   **kw)

    run(a)
    path = tmp_path / "ck.pt"

    def kill(step):
        if step == 8:
            raise Killed

    with pytest.raises(Killed):
        run(b, checkpoint=Checkpoint(path), on_step=kill)
    run(b, checkpoint=Checkpoint(path, resume=True))
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_calibration_on_gpu_matches_cpu():
    model = TinyNet(8).eval()
    calib = loader(make_data(128, seed=2), shuffle=False)
    cpu, gpu = copy.deepcopy(model), copy.deepcopy(model).to(GPU)
    calibrate_bn(cpu, calib, max_batches=4, device="cpu")
    calibrate_bn(gpu, calib, max_batches=4, device=GPU)
    torch.testing.assert_close(gpu.bn2.running_var.cpu(), cpu.bn2.running_var, rtol=1e-4, atol=1e-5)
