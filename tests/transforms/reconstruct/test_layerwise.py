"""reconstruct(): exact on representable layers (held-out data), pruned ResNet error reduced, guards and reasons."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import compress
from compress.errors import CompressError, ConfigError
from compress.models.small import small_resnet
from compress.transforms.reconstruct import ReconstructOptions, reconstruct

from reconstruct_helpers import ConvNet, batches, calibrated, logit_error

# Exactness tolerances of held-out logits (relative L2). The ridge pulls towards the perturbed weights by
# O(ridge) in low-variance input directions, so exactness is checked at a negligible ridge.
EXACT = {torch.float32: 1e-4, torch.float64: 1e-9}
# The records' errors come from the summed normal equations, whose cancellation floor is ~sqrt(eps64) relative.
RECORD_FLOOR = 1e-6
TINY_RIDGE = 1e-10


def _perturb(module: nn.Module, scale: float = 0.5) -> None:
    with torch.no_grad():
        module.weight.add_(scale * module.weight.std() * torch.randn_like(module.weight))


def _pair(dtype=torch.float32):
    calib = batches(4, seed=1, dtype=dtype)
    original = calibrated(ConvNet().to(dtype), calib)
    return original, copy.deepcopy(original), calib, batches(3, seed=2, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layer", ["conv2", "grouped", "depthwise", "fc"])
def test_perturbed_layer_is_restored_on_held_out_inputs(dtype, layer):
    original, model, calib, held_out = _pair(dtype)
    snapshot = copy.deepcopy(original.state_dict())
    _perturb(model.get_submodule(layer))
    assert logit_error(model, original, held_out) > 0.01
    model.train(), original.train()  # the modes of both models come back as they were
    records = reconstruct(model, original, calib, ridge=TINY_RIDGE, verbose=False)
    assert model.training and original.training
    assert all(torch.equal(v, snapshot[k]) for k, v in original.state_dict().items())  # never modified
    assert logit_error(model, original, held_out) < EXACT[dtype]
    by_name = {r.layer: r for r in records}
    assert [r.layer for r in records] == ["conv1", "conv2", "grouped", "depthwise", "fc"]
    assert by_name[layer].status == "fitted" and by_name[layer].error_before > 0.01
    assert by_name[layer].error_after < RECORD_FLOOR and by_name[layer].rows > 0
    assert all(r.status in ("fitted", "kept") for r in records)
    assert (by_name["conv2"].bias, by_name["grouped"].bias, by_name["depthwise"].bias) == ("batchnorm", "own", "none")


def test_default_ridge_restores_closely_and_rows_are_subsampled():
    original, model, calib, held_out = _pair()
    _perturb(model.conv2)
    records = reconstruct(model, original, calib, rows_per_batch=100, verbose=False)
    assert logit_error(model, original, held_out) < 1e-2
    assert {r.layer: r.rows for r in records}["conv2"] == 4 * 100  # 4 batches, 100 of 16*8*8 positions each


def test_intercept_is_folded_into_the_batchnorm():
    """Original conv has a bias, the compressed one none: the fitted intercept moves the BN's running mean."""
    calib, held_out = batches(3, seed=1), batches(2, seed=2)
    original = calibrated(nn.Sequential(nn.Conv2d(3, 6, 3, bias=True), nn.BatchNorm2d(6), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)), calib)
    with torch.no_grad():
        original[0].bias.copy_(torch.randn(6))
    model = copy.deepcopy(original)
    model[0] = nn.Conv2d(3, 6, 3, bias=False)
    with torch.no_grad():
        model[0].weight.copy_(original[0].weight)
    assert logit_error(model, original, held_out) > 0.05
    records = reconstruct(model, original, calib, ridge=TINY_RIDGE, verbose=False)
    assert records[0].bias == "batchnorm" and records[0].status == "fitted" and model[0].bias is None
    assert logit_error(model, original, held_out) < EXACT[torch.float32]


def test_pruned_resnet_logit_error_drops_on_held_out_batches():
    calib, held_out = batches(6, seed=1, shape=(1, 16, 16)), batches(4, seed=2, shape=(1, 16, 16))
    original = calibrated(small_resnet(widths=(8, 16, 16)), calib)
    model = copy.deepcopy(original)
    compress.prune(model, torch.randn(1, 1, 16, 16), ratio=0.5)
    pruned_only = copy.deepcopy(model)
    records = reconstruct(model, original, calib, verbose=False)
    assert not [r for r in records if r.status == "skipped"]  # every pruned layer's channels were recovered
    assert sum(r.status == "fitted" for r in records) >= len(records) - 1
    before, after = logit_error(pruned_only, original, held_out), logit_error(model, original, held_out)
    assert after < 0.8 * before, (before, after)
    fitted = [r for r in records if r.status == "fitted"]
    assert all(r.error_after < r.error_before for r in fitted)


def test_ill_conditioned_layer_keeps_its_weights_with_the_reason():
    original, model, calib, _ = _pair()
    for x, _ in calib:
        x[:, 2] = 0.0  # an input channel that never varies: conv1's patches of it are all zero
    _perturb(model.conv1)
    kept = model.conv1.weight.detach().clone()
    records = reconstruct(model, original, calib, layers=["conv1"], ridge=0.0, verbose=False)
    assert len(records) == 1 and records[0].status == "kept"
    assert "Cholesky" in records[0].reason or "ill-conditioned" in records[0].reason
    assert records[0].error_after == records[0].error_before > 0.05
    assert torch.equal(model.conv1.weight, kept)


def test_shared_and_reordered_layers_are_skipped_with_reasons():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.head(torch.relu(self.conv(torch.relu(self.conv(x)))))

    original = Twice()
    model = copy.deepcopy(original)
    records = {r.layer: r for r in reconstruct(model, original, batches(2, seed=1), verbose=False)}
    assert records["conv"].status == "skipped" and "called 2 time(s)" in records["conv"].reason
    assert records["head"].status in ("fitted", "kept")

    original, model, calib, _ = _pair()  # conv1's channels reordered (as an absorbed permute does) and changed
    perm = torch.roll(torch.arange(8), 3)
    with torch.no_grad():
        model.conv1.weight.copy_(original.conv1.weight[perm] * 1.01)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(model.bn1, name).copy_(getattr(original.bn1, name)[perm])
        model.conv2.weight.copy_(original.conv2.weight[:, perm])
    records = {r.layer: r for r in reconstruct(model, original, calib, verbose=False)}
    assert records["conv1"].status == "skipped" and "original's order" in records["conv1"].reason
    assert torch.equal(model.conv1.weight, original.conv1.weight[perm] * 1.01)
    fixed = {r.layer: r for r in reconstruct(model, original, calib, layers=["conv1"], ridge=TINY_RIDGE,
                                             channels={"conv1": perm}, verbose=False)}
    assert fixed["conv1"].status == "fitted" and fixed["conv1"].error_after < 1e-4


def test_bad_arguments_are_errors_naming_the_field():
    original, model, calib, _ = _pair()
    with pytest.raises(CompressError, match="reconstruct.layers"):
        reconstruct(model, original, calib, layers=["nope*"], verbose=False)
    with pytest.raises(CompressError, match="no batches"):
        reconstruct(model, original, [], verbose=False)
    with pytest.raises(ConfigError, match=r"reconstruct\.ridge: expected a number >= 0"):
        reconstruct(model, original, calib, ridge=-1.0, verbose=False)
    with pytest.raises(ConfigError, match="rows_per_batch"):
        ReconstructOptions(rows_per_batch=0)
    with pytest.raises(ConfigError, match="max_batches"):
        ReconstructOptions(max_batches=0)


def test_options_object_equals_keywords_and_both_are_refused():
    """A ReconstructOptions object and the same fields as keywords give the same fit; giving both is refused."""
    original, model, calib, _ = _pair()
    _perturb(model.conv2)
    by_keywords, by_object = copy.deepcopy(model), copy.deepcopy(model)
    a = reconstruct(by_keywords, original, calib, ridge=TINY_RIDGE, rows_per_batch=300, verbose=False)
    b = reconstruct(by_object, original, calib, ReconstructOptions(ridge=TINY_RIDGE, rows_per_batch=300),
                    verbose=False)
    assert [r.status for r in a] == [r.status for r in b]
    for p, q in zip(by_keywords.parameters(), by_object.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    with pytest.raises(CompressError, match="not both"):
        reconstruct(by_object, original, calib, ReconstructOptions(), ridge=0.0, verbose=False)
    with pytest.raises(CompressError, match="unknown option 'rigde'"):
        reconstruct(by_object, original, calib, rigde=0.0, verbose=False)
    with pytest.raises(CompressError, match=r"reconstruct\.rows_per_batch: expected"):
        reconstruct(by_object, original, calib, rows_per_batch=0, verbose=False)
