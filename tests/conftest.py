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


@pytest.fixture
def step_context(tmp_path):
    """Factory of real :class:`~compress.context.RunContext` s, what step handlers receive in a run.

    ``make(model, calib=[(images, labels), ...], ...)``: the loaders are the given batch lists (the calibration
    list stands in for the splits not given); ``rank=1`` makes a non-main process.
    """
    import copy

    from compress.context import RunContext
    from compress.data import DataBundle

    def make(model, *, calib=(), val=None, train=None, test=None, example_inputs=None, baseline=None,
             num_classes: int = 4, **fields) -> RunContext:
        calib = list(calib)
        x = example_inputs if example_inputs is not None else calib[0][0][:1]
        train = calib if train is None else train
        test = calib if test is None else test
        data = DataBundle(train=train, val=val, test=test, calib=calib, num_classes=num_classes,
                          input_shape=tuple(x.shape[1:]), source="test", synthetic=True,
                          sizes={"train": len(train), "val": len(val or ()), "test": len(test), "calib": len(calib)})
        fields.setdefault("verbose", False)
        fields.setdefault("seed", 0)
        return RunContext(out_dir=tmp_path, device=torch.device("cpu"), model=model,
                          baseline=baseline if baseline is not None else copy.deepcopy(model).eval(), data=data,
                          example_inputs=x, **fields)

    return make
