"""Dead channels: only structurally dead ones are called exact; data-constant ones are checked on held-out data."""
from __future__ import annotations

import copy

import torch
from torch import nn

from compress.analysis import analyze
from compress.transforms import prune

STRUCTURAL, DATA = 1, 2  # conv1 channels: a zero filter, and one whose ReLU stayed off on the calibration images


def planted() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
            bn.bias.fill_(1.0)  # every other channel is live on any input
        model[0].weight[STRUCTURAL] = 0.0
        model[1].bias[STRUCTURAL] = -0.5  # ReLU(-0.5 + ...) = 0 whatever the input
        model[0].weight[DATA] = 0.5  # large positive filter ...
        model[0].bias[DATA] = 0.0
        model[1].running_mean[DATA] = 0.0
        model[1].weight[DATA], model[1].bias[DATA] = 1.0, -3.0  # ... off unless the input is large
    return model.eval()


def test_structural_and_data_constant_channels_are_told_apart():
    model = planted()
    calib = [0.05 * torch.randn(16, 3, 8, 8) for _ in range(3)]  # quiet images: channel DATA never fires
    held_out = [3.0 * torch.randn(16, 3, 8, 8) for _ in range(2)]  # new inputs: it does
    with torch.no_grad():
        assert float(nn.Sequential(*model[:3])(calib[0])[:, DATA].abs().max()) == 0.0
        assert float(nn.Sequential(*model[:3])(held_out[0])[:, DATA].max()) > 0.0
    analysis = analyze(model, calib, verbose=False)
    dead = analysis.dead_channels()["0"]
    assert dead[STRUCTURAL].structural and str(dead[STRUCTURAL]).startswith("zero filter weights; always 0")
    assert not dead[DATA].structural and dead[DATA].kind == "constant"
    assert str(dead[DATA]) == "constant on 48 calibration images (value 0); not proven for other inputs"
    assert "always" not in str(dead[DATA])

    pruned = copy.deepcopy(model)
    result = prune(pruned, calib[0][:1], analysis=analysis, calib=calib, held_out=held_out)
    assert sorted(c for r in result.dead.removed for c in r.channels) == [STRUCTURAL, DATA]
    assert not any(r.exact for r in result.dead.removed if DATA in r.channels)  # never "exact" from data alone
    assert result.dead.error < 1e-6  # on the calibration batches the removal looks lossless ...
    assert result.dead.held_out_error > 1e-3  # ... on held-out inputs it is not, and the report says so
    report = result.to_dict()["dead"]
    assert report["held_out_error"] == result.dead.held_out_error


def test_structural_removal_alone_is_exact_on_held_out_data():
    model = planted()
    with torch.no_grad():  # make channel DATA live: only the structural one is dead now
        model[1].bias[DATA] = 0.5
    calib = [torch.randn(16, 3, 8, 8) for _ in range(3)]
    held_out = [3.0 * torch.randn(16, 3, 8, 8) for _ in range(2)]
    analysis = analyze(model, calib, verbose=False)
    pruned = copy.deepcopy(model)
    result = prune(pruned, calib[0][:1], analysis=analysis, calib=calib, held_out=held_out)
    assert [c for r in result.dead.removed for c in r.channels] == [STRUCTURAL]
    assert all(r.exact for r in result.dead.removed)
    assert result.dead.held_out_error < 1e-5
    with torch.no_grad():
        torch.testing.assert_close(pruned(held_out[1]), model(held_out[1]), rtol=1e-5, atol=1e-5)
