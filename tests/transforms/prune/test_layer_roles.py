"""Layer roles from the dependency graph: direct producers (the locking and classifier rules are in
test_prune_compat.py, next to the pruning they protect)."""
from __future__ import annotations

import torch
from torch import nn

from compress.transforms.prune.layer_roles import direct_producer
from compress.transforms.prune.tp_compat import build_graph


class _Residual(nn.Module):
    """stem -> BN -> ReLU -> max-pool -> (x + a(x)) -> ReLU -> b; ``a`` reads the stem, ``b`` an add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.act, self.pool = nn.ReLU(inplace=True), nn.MaxPool2d(2)
        self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.bn(self.stem(x))))
        return self.b(torch.relu(x + self.a(x)))


def test_direct_producer_crosses_bn_and_activations_but_not_adds():
    model = _Residual().eval()
    graph = build_graph(model, torch.randn(1, 3, 8, 8))
    assert direct_producer(graph, model.a) is model.stem
    assert direct_producer(graph, model.b) is None  # reads a sum of two producers
    assert direct_producer(graph, model.stem) is None  # reads the model input
