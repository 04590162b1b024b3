"""prune / dead removal / save-load with the model and inputs on a CUDA device (skipped without one)."""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision

from compress.analysis.dead import DeadChannel
from compress.serialization import load, save
from compress.transforms.prune.pruner import prune

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


class _Dead:
    def dead_channels(self):
        return {"layer1.0.conv1": {3: DeadChannel("zero_gamma", 0.0), 8: DeadChannel("zero_gamma", 0.0)}}


def _factory(spec: dict) -> torch.nn.Module:
    return torchvision.models.resnet18(num_classes=10)


def test_prune_on_cuda_matches_expectations(tmp_path):
    device = torch.device("cuda")
    model = torchvision.models.resnet18(num_classes=10).to(device).eval()
    model.layer1[0].bn1.weight.data[[3, 8]] = 0.0
    model.layer1[0].bn1.bias.data[[3, 8]] = -1.0
    x = torch.randn(4, 3, 32, 32, device=device)
    calib = [(x, torch.randint(0, 10, (4,), device=device))]
    ref = copy.deepcopy(model)
    result = prune(model, x[:1], macs_target=0.5, importance="taylor", analysis=_Dead(), calib=calib)
    assert result.dead.channels_removed == 2 and result.dead.error <= 1e-4
    assert result.target_met and result.macs_fraction >= 0.49
    assert all(p.device.type == "cuda" for p in model.parameters()) and ref.layer1[0].conv1.out_channels == 64
    save(model, tmp_path / "m.pt", spec={"name": "torchvision:resnet18", "kwargs": {"num_classes": 10}},
         factory=_factory)
    loaded = load(tmp_path / "m.pt", map_location="cuda", factory=_factory).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)
