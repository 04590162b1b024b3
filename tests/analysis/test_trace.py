"""Which module a conv's statistics are taken at, and that analyze leaves no trace on the model."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from analysis_helpers import random_batches
from compress.analysis import analyze
from compress.analysis.trace import trace_chains
from compress.errors import CompressError


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.a_bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)  # functional relu: point stays at BN
        self.b, self.b_id, self.b_bn, self.b_act = nn.Conv2d(4, 4, 1), nn.Identity(), nn.BatchNorm2d(4), nn.SiLU()
        self.c, self.c_bn = nn.Conv2d(4, 6, 1), nn.BatchNorm2d(4)  # channel mismatch: not a follower
        self.d, self.d_act = nn.Conv2d(4, 4, 1), nn.Hardswish()  # activation without BN

    def forward(self, x):
        x = F.relu(self.a_bn(self.a(x)))
        x = self.b_act(self.b_bn(self.b_id(self.b(x))))
        x = self.d_act(self.d(x))
        return self.c(x), self.c_bn(x)


def test_points_of_mixed_followers():
    chains = {c.conv: c for c in trace_chains(Mixed().eval(), torch.randn(1, 3, 8, 8))}
    assert (chains["a"].point, chains["a"].bn, chains["a"].activation) == ("a_bn", "a_bn", None)
    assert (chains["b"].point, chains["b"].bn, chains["b"].activation) == ("b_act", "b_bn", "SiLU")
    assert (chains["d"].point, chains["d"].activation) == ("d_act", "Hardswish")
    assert chains["c"].point == "c"


def test_resnet_residual_add_ends_the_chain():
    model = torchvision.models.resnet18(weights=None).eval()
    chains = {c.conv: c for c in trace_chains(model, torch.randn(1, 3, 32, 32))}
    # conv2's BN output is modified in place by `out += identity`; the shared ReLU then is not its follower
    assert chains["layer1.0.conv2"].point == "layer1.0.bn2"
    assert chains["layer1.0.conv1"].point == "layer1.0.relu" and chains["layer1.0.conv1"].ordinal == 0
    assert chains["layer2.0.downsample.0"].point == "layer2.0.downsample.1"


def test_shared_conv_pools_calls_and_is_noted():
    conv = nn.Conv2d(3, 3, 1)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return self.conv(self.conv(x))

    analysis = analyze(Twice(), random_batches(2, batch=2, shape=(3, 4, 4)), verbose=False)
    assert analysis.info["conv"].samples == 2 * 2 * 2 * 16
    assert any("several times" in n for n in analysis.notes)


class Boom(Exception):
    pass


def test_hooks_removed_and_modes_restored_on_error():
    model = Mixed().train()

    def loader():
        yield torch.randn(2, 3, 8, 8)
        raise Boom

    with pytest.raises(Boom):
        analyze(model, loader(), verbose=False)
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_user_errors():
    model = Mixed()
    with pytest.raises(CompressError, match="no batches"):
        analyze(model, [], verbose=False)
    with pytest.raises(CompressError, match="max_batches"):
        analyze(model, [torch.randn(1, 3, 8, 8)], max_batches=0, verbose=False)
    with pytest.raises(CompressError, match="no nn.Conv2d"):
        analyze(nn.Linear(3, 3), [torch.randn(1, 3)], verbose=False)
    with pytest.raises(CompressError, match="tensor"):
        analyze(model, [{"x": torch.randn(1, 3, 8, 8)}], verbose=False)
