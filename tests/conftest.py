"""Shared fixtures: tiny deterministic data and models, and a small thread budget for the 2-core CI."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# One thread: on a shared 2-core box a second intra-op thread makes tiny ops 10-20x slower when it loses
# its core; tests measure correctness, not speed.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """Point the baseline cache at a temp dir so tests never touch ~/.cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("COMPRESS_CACHE", str(cache))
    return cache
