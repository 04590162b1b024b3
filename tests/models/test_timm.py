"""timm models (from PyPI, random weights, small inputs) through compress's user path: build, analyze, prune,
rewrite, and a finite forward pass of the right shape after each."""
from __future__ import annotations

import copy

import pytest
import torch

timm = pytest.importorskip("timm")

from compress.analysis import analyze  # noqa: E402
from compress.models import build_model  # noqa: E402
from compress.transforms import prune, rewrite  # noqa: E402

# One model of three common timm families, small enough for the 2-core CI.
MODELS = ["resnet18", "mobilenetv3_small_050", "efficientnet_b0"]
X = torch.randn(2, 3, 64, 64)


@pytest.fixture(scope="module", params=MODELS)
def timm_model(request):
    torch.manual_seed(0)
    return request.param, build_model({"name": f"timm:{request.param}", "kwargs": {"num_classes": 10}}).eval()


def _finite(model, x=X):
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    return out


def test_timm_model_analyzes_prunes_and_rewrites(timm_model):
    name, model = timm_model
    _finite(model)
    analysis = analyze(model, [(X, torch.zeros(2, dtype=torch.long))], verbose=False)
    assert analysis.layers
    pruned = copy.deepcopy(model)
    result = prune(pruned, X[:1], ratio=0.3, analysis=analysis)
    assert result.macs_after < result.macs_before, name
    _finite(pruned)
    # separable for the dense KxK convs (ResNet); mobile nets have only depthwise KxK, so their dense 1x1s get
    # the channel-shuffled grouped form
    kind, options = ("separable", {"T": 2}) if name == "resnet18" else ("shuffle", {"groups": 2})
    rewritten = copy.deepcopy(model)
    records = rewrite(rewritten, kind, example_inputs=X[:1], **options)
    assert sum(r.skipped is None for r in records) >= 3, (name, [r.skipped for r in records][:5])
    _finite(rewritten)
