"""The CUDA path gives the CPU results (skipped without a GPU)."""
from __future__ import annotations

import pytest
import torch

from analysis_helpers import DeadNet, plant_dead, random_batches
from compress.analysis import analyze

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture
def no_tf32():
    """cuDNN convs default to TF32 (~1e-3 relative) on Ampere+; compare CPU and GPU at float32 precision."""
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = saved


def test_cuda_matches_cpu_and_model_returns_home(no_tf32):
    torch.manual_seed(0)
    net = DeadNet()
    batches = random_batches(3, batch=4)
    plant_dead(net, batches)
    cpu = analyze(net, batches, verbose=False)
    gpu = analyze(net, batches, device="cuda", verbose=False)  # CPU batches and model, moved for the run
    assert all(p.device.type == "cpu" for p in net.parameters())
    assert _same_dead(gpu, cpu)
    for layer in cpu.layers:
        n = cpu.info[layer].samples
        for key, value in cpu.stats(layer).items():
            # a ReLU input within float32 rounding of 0 may land on the other side: allow 3 flips in APoZ
            atol = 3.0 / n if key == "apoz" else 1e-5
            torch.testing.assert_close(gpu.stats(layer)[key], value, rtol=1e-4, atol=atol, msg=f"{layer} {key}")
        torch.testing.assert_close(gpu.correlation(layer), cpu.correlation(layer), rtol=1e-4, atol=1e-4)


def _same_dead(a, b) -> bool:
    """Same channels and kinds; values equal to float32 precision."""
    da, db = a.dead_channels(), b.dead_channels()
    return all(da[l].keys() == db[l].keys() and all(
        da[l][c].kind == db[l][c].kind and (da[l][c].value is None) == (db[l][c].value is None)
        and abs((da[l][c].value or 0.0) - (db[l][c].value or 0.0)) < 1e-5 for c in da[l]) for l in da)


def test_cuda_model_on_gpu_with_half_activations():
    torch.manual_seed(0)
    net = DeadNet().cuda().half()
    batches = [(x.cuda().half(), y) for x, y in random_batches(2, batch=4)]
    analysis = analyze(net, batches, verbose=False)
    assert all(torch.isfinite(analysis.correlation(l)).all() for l in analysis.layers)
    assert next(net.parameters()).dtype == torch.float16 and next(net.parameters()).is_cuda
