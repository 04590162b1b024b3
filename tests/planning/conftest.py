"""Fixtures of the planning tests: a tiny net and its input."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from planning_helpers import tiny_net


@pytest.fixture
def net() -> nn.Sequential:
    return tiny_net()


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(1, 3, 16, 16)
