"""A small, fully built RunContext: tiny model, synthetic loaders, three records made by real steps (the rewrite
record is what the registered ``rewrite`` step returns, so the report reads the keys the steps really emit)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from compress.config import parse
from compress.context import RunContext
from compress.data import DataBundle
from compress.env import environment
from compress.recipe.registry import get_step


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture
def tiny_ctx(tmp_path) -> RunContext:
    torch.manual_seed(0)
    images, labels = torch.randn(24, 3, 16, 16), torch.randint(0, 4, (24,))
    loader = DataLoader(TensorDataset(images, labels), batch_size=8)
    data = DataBundle(train=loader, val=None, test=loader, calib=loader, num_classes=4, input_shape=(3, 16, 16),
                      source="synthetic", synthetic=True, sizes={"train": 24, "val": 0, "test": 24, "calib": 24})
    baseline = Tiny().eval()
    ctx = RunContext(out_dir=tmp_path / "run", device=torch.device("cpu"), seed=0, model=copy.deepcopy(baseline),
                     baseline=baseline, data=data, example_inputs=torch.zeros(1, 3, 16, 16),
                     environment=environment(seed=0, device="cpu"))
    ctx.out_dir.mkdir()
    ctx.record("baseline")
    analyze = get_step("analyze")
    ctx.record("analyze", analyze.handler(ctx, parse(analyze.config, {"max_batches": 1, "save": False})),
               measure=False)
    ctx.analysis = None  # the rewrite below runs data-free, as in a recipe without an analysis
    step = get_step("rewrite")
    details = step.handler(ctx, parse(step.config, {"kind": "grouped", "groups": 4, "layers": ["conv2"],
                                                     "min_channels": 1}))
    ctx.record("rewrite", details, seconds=0.5)
    return ctx
