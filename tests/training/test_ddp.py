"""Data-parallel training under torchrun (2 CPU processes, gloo) matches a single-process run."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from compress.errors import CompressError
from compress.training import fit
from compress.training import distributed as D
from tiny_training import TinyNet, make_data

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "ddp_fit_script.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_process_reference() -> list[float]:
    import ddp_fit_script as script

    data = make_data(128)
    # The same global batches as the 2 ranks together: DistributedSampler's permutation for (seed, epoch),
    # cut into chunks of the global batch (each rank takes every other index of a chunk).
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=script.SEED)
    torch.manual_seed(0)
    model = TinyNet(4, bn=False)
    hist = fit(model, DataLoader(data, batch_size=script.GLOBAL_BATCH, sampler=sampler), config=script.CONFIG,
               device="cpu", seed=script.SEED, verbose=False)
    return hist.step_loss, model.state_dict()


def test_torchrun_two_ranks_match_single_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parents[1]), "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(SCRIPT), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]

    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for name in r0:
        assert torch.equal(r0[name], r1[name]), name
    k0, k1 = (torch.load(tmp_path / f"rank{r}_kd.pt", weights_only=True) for r in (0, 1))
    for name in k0:
        assert torch.equal(k0[name], k1[name]), f"after feature distillation: {name}"

    ddp = json.loads((tmp_path / "history.json").read_text())
    single_loss, single_state = _single_process_reference()
    assert ddp["world"] == 2 and len(ddp["step_loss"]) == len(single_loss) == 8
    # Same global batch, DDP's gradient averaging == gradient of the mean loss over the concatenated batch;
    # only float summation order differs.
    torch.testing.assert_close(torch.tensor(ddp["step_loss"]), torch.tensor(single_loss), rtol=1e-4, atol=0)
    for name in single_state:
        torch.testing.assert_close(r0[name], single_state[name], rtol=1e-4, atol=1e-5, msg=name)


def test_helpers_are_noops_in_one_process():
    loader = DataLoader(make_data(8), batch_size=3)
    assert D.init_distributed() == (0, 1, 0) or "RANK" in os.environ
    assert D.world_size() == 1 and D.rank() == 0 and D.is_main()
    assert D.distributed_loader(loader, shuffle=True, seed=1) is loader
    assert D.broadcast_object({"a": 1}) == {"a": 1} and D.all_gather_object(3) == [3]
    t = torch.ones(2)
    assert D.all_reduce_sum(t) is t and torch.equal(t, torch.ones(2))
    model = TinyNet(4)
    assert D.wrap_ddp(model, torch.device("cpu")) is model and D.unwrap(model) is model
    D.barrier()


def test_batch_not_divisible_by_world_is_a_user_error(monkeypatch):
    monkeypatch.setattr(D, "is_distributed", lambda: True)
    monkeypatch.setattr(D, "world_size", lambda: 2)
    monkeypatch.setattr(D, "rank", lambda: 0)
    with pytest.raises(CompressError, match="divisible"):
        D.distributed_loader(DataLoader(make_data(8), batch_size=3), seed=0)
    rebuilt = D.distributed_loader(DataLoader(make_data(8), batch_size=4, shuffle=True), seed=5)
    assert rebuilt.batch_size == 2 and isinstance(rebuilt.sampler, DistributedSampler)
    assert rebuilt.sampler.shuffle and rebuilt.sampler.seed == 5 and rebuilt.sampler.num_replicas == 2
