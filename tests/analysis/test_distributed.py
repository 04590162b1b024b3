"""Under torch.distributed every rank gets the statistics of all ranks' data (2 CPU processes, gloo)."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from analysis_helpers import random_batches
from compress.analysis import analyze, load_analysis


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 1)).double()


def _batches() -> list:
    return random_batches(4, batch=3, shape=(3, 8, 8), seed=5, dtype=torch.float64)


def _worker(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        analysis = analyze(_model(), _batches()[rank::world], verbose=False)
        analysis.save(f"{out}/rank{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes importing torch: ~25 s on a busy 2-core machine
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_ranks_share_global_statistics(tmp_path):
    mp.spawn(_worker, args=(2, f"file://{tmp_path}/store", str(tmp_path)), nprocs=2, join=True)
    full = analyze(_model(), _batches(), verbose=False)
    ranks = [load_analysis(tmp_path / f"rank{r}") for r in range(2)]
    for got in ranks:
        assert (got.batches, got.images) == (4, 12)
        for layer in full.layers:
            assert got.info[layer] == full.info[layer]
            want, have = full.stats(layer), got.stats(layer)
            for key in want:
                torch.testing.assert_close(have[key], want[key], rtol=1e-10, atol=1e-12, msg=f"{layer} {key}")
            torch.testing.assert_close(got.correlation(layer), full.correlation(layer), rtol=1e-10, atol=1e-12)
    for layer in full.layers:
        assert torch.equal(ranks[0].correlation(layer), ranks[1].correlation(layer))
