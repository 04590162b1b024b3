"""Kill + resume reaches bit-identical weights; checkpoints are validated against the model and settings."""
from __future__ import annotations

import pytest
import torch

from compress.errors import CompressError
from compress.training import Checkpoint, DistillConfig, Teacher, TrainConfig, fit
from compress.training.checkpoint import load_checkpoint, rng_state, set_rng_state
from tiny_training import TinyNet, loader, make_data

CPU = torch.device("cpu")


class Killed(Exception):
    """Stands in for the process being killed right after a step."""


def _kill_at(k):
    def hook(step):
        if step == k:
            raise Killed(step)
    return hook


def _run(model, path=None, resume=False, hook=None, teacher=None, config=None):
    # 80 samples / batch 16 = 5 batches per epoch; 13 steps cross two epoch boundaries.
    config = config or TrainConfig(steps=13, lr=0.05, checkpoint_every=3, warmup_epochs=0.4)
    return fit(model, loader(make_data(80), batch_size=16), val_loader=loader(make_data(32, seed=1), shuffle=False),
               config=config, device=CPU, checkpoint=Checkpoint(path, resume=resume) if path else None, seed=3,
               on_step=hook, teacher=Teacher(teacher, DistillConfig(alpha=0.5, features=("conv2",))) if teacher else None,
               verbose=False)


def _assert_identical(a, b):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("kill_at", [7, 11])  # 7: mid-epoch (checkpoint at step 6); 11: 2nd epoch boundary ckpt 9
def test_resume_after_kill_is_bit_identical(tmp_path, kill_at):
    init = TinyNet(4, dropout=0.3)  # dropout + BN: exercises RNG and buffer restoration
    reference, killed, resumed = (TinyNet(4, dropout=0.3) for _ in range(3))
    for m in (reference, killed, resumed):
        m.load_state_dict(init.state_dict())
    full = _run(reference)

    path = tmp_path / "ck.pt"
    with pytest.raises(Killed):
        _run(killed, path, hook=_kill_at(kill_at))
    assert load_checkpoint(path)["position"]["step"] == (kill_at // 3) * 3
    hist = _run(resumed, path, resume=True)

    _assert_identical(reference, resumed)
    assert hist.step_loss == full.step_loss and hist.step_lr == full.step_lr
    assert [e["val_acc"] for e in hist.epochs] == [e["val_acc"] for e in full.epochs]
    assert hist.resumed_from_step == (kill_at // 3) * 3


def test_resume_with_feature_distillation_adapters_is_bit_identical(tmp_path):
    teacher = TinyNet(8).eval()  # conv2 has 16 channels vs the student's 8: a 1x1 adapter is trained along
    init = TinyNet(4)
    reference, resumed = TinyNet(4), TinyNet(4)
    reference.load_state_dict(init.state_dict())
    resumed.load_state_dict(init.state_dict())
    _run(reference, teacher=teacher)
    path = tmp_path / "ck.pt"
    with pytest.raises(Killed):
        _run(resumed, path, hook=_kill_at(8), teacher=teacher)
    assert load_checkpoint(path)["adapters"]  # the adapter's weights are checkpointed
    _run(resumed, path, resume=True, teacher=teacher)
    _assert_identical(reference, resumed)


def test_resume_of_finished_run_returns_without_training(tmp_path):
    path = tmp_path / "ck.pt"
    model = TinyNet(4)
    first = _run(model, path)
    again = TinyNet(4)
    hist = _run(again, path, resume=True, hook=_kill_at(1))  # would raise if a step ran
    _assert_identical(model, again)
    assert hist.steps == first.steps == 13


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    hist = _run(TinyNet(4), tmp_path / "missing.pt", resume=True)
    assert hist.steps == 13 and hist.resumed_from_step is None
    assert (tmp_path / "missing.pt").exists()


def test_resume_rejects_other_settings_and_other_architecture(tmp_path):
    path = tmp_path / "ck.pt"
    with pytest.raises(Killed):
        _run(TinyNet(4), path, hook=_kill_at(4))
    with pytest.raises(CompressError, match="lr"):
        _run(TinyNet(4), path, resume=True, config=TrainConfig(steps=13, lr=0.1, checkpoint_every=3,
                                                                 warmup_epochs=0.4))
    with pytest.raises(CompressError, match="does not fit the model"):
        _run(TinyNet(6), path, resume=True)


def test_unreadable_checkpoint_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CompressError, match="cannot be read"):
        load_checkpoint(bad)


def test_rng_state_roundtrip_covers_all_generators():
    import random

    import numpy as np

    gen = torch.Generator().manual_seed(5)
    state = rng_state(gen)
    first = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=gen))
    set_rng_state(state, gen)
    second = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=gen))
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert first[2] == second[2] and torch.equal(first[3], second[3])
