"""Distillation losses, and a measured check that distilling from a good teacher helps a small student."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from compress.config import parse
from compress.errors import CompressError, ConfigError
from compress.training import DistillConfig, Teacher, TrainConfig, distillation_loss, feature_loss, fit
from compress.training.distill import FeatureDistiller
from compress.training.evaluate import top1_accuracy
from tiny_training import TinyNet, loader, make_data

CPU = torch.device("cpu")


def test_distillation_loss_matches_definition():
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    y = torch.randint(0, 4, (5,))
    T, alpha = 3.0, 0.6
    p_t = torch.softmax(t / T, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s / T, 1))).sum(1).mean()
    expected = alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, y, label_smoothing=0.1)
    got = distillation_loss(s, t, y, alpha=alpha, temperature=T, label_smoothing=0.1)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_distillation_loss_edge_cases():
    s = torch.randn(6, 3, requires_grad=True)
    y = torch.randint(0, 3, (6,))
    assert distillation_loss(s, torch.randn(6, 3), y, alpha=0.0, temperature=4).item() == pytest.approx(
        F.cross_entropy(s, y).item())
    same = distillation_loss(s, s.detach().clone(), y, alpha=1.0, temperature=4)
    assert same.item() == pytest.approx(0.0, abs=1e-6)  # KL(p || p) = 0
    distillation_loss(s, torch.randn(6, 3, requires_grad=True), y, alpha=1.0, temperature=2).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_feature_loss_and_adapters():
    student, teacher = TinyNet(4), TinyNet(8)
    fd = FeatureDistiller(student, teacher, ["conv1", "fc"])
    x = torch.randn(2, 1, 12, 12)
    student(x), teacher(x)
    fd.setup(CPU)
    assert isinstance(fd.adapters["conv1"], torch.nn.Conv2d) and fd.adapters["conv1"].in_channels == 4
    assert "fc" not in fd.adapters  # same width (classes): no adapter
    student(x), teacher(x)
    s1, t1 = fd._student["conv1"], fd._teacher["conv1"]
    expected = F.mse_loss(fd.adapters["conv1"](s1), t1) + F.mse_loss(fd._student["fc"], fd._teacher["fc"])
    assert fd.loss().item() == pytest.approx(expected.item(), rel=1e-6)
    fd.close()
    assert not student.conv1._forward_hooks and not teacher.conv1._forward_hooks
    a = torch.randn(2, 3, 4, 4)
    assert feature_loss(a, a).item() == 0.0


def test_unknown_feature_layer_is_a_user_error():
    with pytest.raises(CompressError, match="'nope'"):
        FeatureDistiller(TinyNet(4), TinyNet(8), ["nope"])


@pytest.mark.parametrize("data,field", [({"alpha": 1.5}, "alpha"), ({"alpha": 0.5, "temperature": 0}, "temperature"),
                                        ({}, "alpha"), ({"alpha": 0.5, "features": ["a", "a"]}, "features")])
def test_distill_config_validation(data, field):
    with pytest.raises(ConfigError, match=field):
        parse(DistillConfig, data)


def test_distillation_beats_label_only_at_same_budget():
    """A well-trained teacher (256 samples) and a half-width student trained for 100 steps on 64 samples.

    This is the regime where distillation matters in compression: a short fine-tune on limited data, where the
    teacher's soft targets carry information the 64 hard labels lack. Measured while writing this test (test
    accuracy over student seeds 0-4, T=4): label-only 0.889 0.896 0.902 0.896 0.861 (mean 0.889); alpha 0.7
    0.936 0.934 0.928 0.930 0.869 (mean 0.919); alpha 0.9 mean 0.919. At 40 steps all students were ~0.52
    and distillation helped 4 of 5 seeds by ~0.02, so the default alpha 0.7 stays.
    """
    train, test = make_data(256, seed=0), make_data(512, seed=1)
    teacher = TinyNet(16)
    fit(teacher, loader(train), config=TrainConfig(epochs=12, lr=0.05), device=CPU, verbose=False)
    teacher_acc = top1_accuracy(teacher, loader(test, shuffle=False), device=CPU)
    assert teacher_acc > 0.9

    small = TensorDataset(train.tensors[0][:64], train.tensors[1][:64])
    config = TrainConfig(epochs=25, lr=0.05)
    students = {}
    for name, kd in (("label", None), ("kd", DistillConfig(alpha=0.7, temperature=4.0))):
        torch.manual_seed(0)
        students[name] = TinyNet(8)
        fit(students[name], loader(small, batch_size=16), config=config, device=CPU, seed=0, verbose=False,
            teacher=Teacher(teacher, kd) if kd else None)
    acc = {k: top1_accuracy(m, loader(test, shuffle=False), device=CPU) for k, m in students.items()}
    print(f"teacher {teacher_acc:.3f} label-only {acc['label']:.3f} distilled {acc['kd']:.3f}")
    assert acc["kd"] >= acc["label"], acc
