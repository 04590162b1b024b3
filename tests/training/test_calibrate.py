"""BatchNorm re-calibration restores running statistics after they were corrupted."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.optim.swa_utils import update_bn

from compress.errors import CompressError
from compress.training import TrainConfig, calibrate_bn, fit
from compress.training.evaluate import top1_accuracy
from tiny_training import TinyNet, loader, make_data

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = TinyNet(8, dropout=0.2)
    fit(model, loader(make_data(256)), config=TrainConfig(epochs=4), device=CPU, verbose=False)
    return model.eval()


def _corrupt(model):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.add_(3.0)
            m.running_var.mul_(10.0)


def test_calibration_matches_an_exact_cumulative_pass_and_restores_accuracy(trained):
    calib = loader(make_data(128, seed=2), batch_size=32, shuffle=False)
    test = loader(make_data(256, seed=1), shuffle=False)
    # Reference: torch's own cumulative BN update over the full calibration set; dropout sits after the last
    # BN in TinyNet, so whole-model train mode (what update_bn does) gives the same statistics.
    exact = copy.deepcopy(trained)
    update_bn(((x, y) for x, y in calib), exact)
    exact.eval()
    model = copy.deepcopy(trained)
    _corrupt(model)
    broken_acc = top1_accuracy(model, test, device=CPU)

    assert calibrate_bn(model, calib, max_batches=4, device=CPU) == 2
    for (name, a), b in zip(model.named_buffers(), exact.buffers()):
        if "running" in name:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    # The first BN sees conv1 outputs directly: its mean is the exact population mean (equal-size batches).
    feats = torch.cat([trained.conv1(x) for x, _ in calib])
    torch.testing.assert_close(model.bn1.running_mean, feats.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    x = next(iter(test))[0]
    with torch.no_grad():
        torch.testing.assert_close(model(x), exact(x), rtol=1e-4, atol=1e-5)
    acc, exact_acc = top1_accuracy(model, test, device=CPU), top1_accuracy(exact, test, device=CPU)
    assert acc == pytest.approx(exact_acc) and acc > broken_acc + 0.2, (broken_acc, acc)


def test_few_batches_are_close_and_modes_and_momentum_are_restored(trained):
    calib = loader(make_data(128, seed=2), batch_size=32, shuffle=False)
    exact = copy.deepcopy(trained)
    update_bn(((x, y) for x, y in calib), exact)
    model = copy.deepcopy(trained)
    _corrupt(model)
    model.drop.train()  # a mixed-mode model: flags must come back as they were
    calibrate_bn(model, calib, max_batches=2, device=CPU)
    assert model.bn1.momentum == 0.1 and not model.training and model.drop.training and not model.bn1.training
    assert model.bn1.num_batches_tracked.item() == 2
    torch.testing.assert_close(model.bn1.running_mean, exact.bn1.running_mean, rtol=0.1, atol=0.05)


def test_no_batchnorm_returns_zero_without_reading_data():
    class Boom:
        def __iter__(self):
            raise AssertionError("the loader must not be read")

    assert calibrate_bn(TinyNet(4, bn=False), Boom(), device=CPU) == 0
    with pytest.raises(CompressError, match="max_batches"):
        calibrate_bn(TinyNet(4), Boom(), max_batches=0)
