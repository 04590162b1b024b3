"""Fixtures of the planning tests: one intra-op thread, a tiny net and its input."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from planning_helpers import tiny_net


@pytest.fixture(autouse=True)
def one_thread():
    """Two intra-op threads on this loaded 2-core machine turn sub-ms forwards into 20-50 ms stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def net() -> nn.Sequential:
    return tiny_net()


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(1, 3, 16, 16)
