"""The planner on CUDA (bf16, channels_last): measured on the GPU, blocks dropped, plan applied. Needs CUDA."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compress.models import small_resnet
from compress.planning import PlanOptions, apply_plan, plan

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_latency_plan_on_cuda_drops_blocks_and_applies(tmp_path):
    torch.manual_seed(0)
    net = small_resnet(widths=(32, 32, 64), blocks=(2, 1, 1), in_channels=3).cuda().eval()
    x = torch.randn(1, 3, 32, 32, device="cuda")
    calib = [torch.randn(16, 3, 32, 32, device="cuda") for _ in range(2)]
    p = plan(net, x, PlanOptions(target={"latency": 0.8}, device="cuda", batch=64, dtype="bfloat16",
             channels_last=True, forms=("prune", "drop"), calib_batches=2, max_iters=2, cache_dir=str(tmp_path)),
             calib=calib, verbose=False)
    assert p.device.startswith("cuda") and p.dtype == "bfloat16" and p.align == 32
    assert p.latency is not None and p.latency["device"].startswith("cuda")
    assert p.measured_ratio == pytest.approx(p.latency["compressed_ms"] / p.latency["baseline_ms"])
    assert any(n.startswith("droppable blocks") for n in p.notes)  # block overheads were timed on the GPU
    planned = apply_plan(copy.deepcopy(net), p, x, calib=calib)
    for c in p.choices:
        if c.form == "drop":
            assert isinstance(planned.get_submodule(c.layer), nn.Identity)
    with torch.no_grad():
        assert planned(calib[0]).shape == (16, 10)
    if p.choices:  # never a slower model without saying so
        assert p.measured_ratio < 1.0 or "SLOWER" in p.verdict
