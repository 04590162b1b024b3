"""reconstruct() after rewrites: the last conv of a separable / grouped rewrite is fitted, per group, through the
rewrite's output permute; error never grows and exactly representable cases are exact."""
from __future__ import annotations

import copy

import pytest
import torch

import compress
from compress.transforms.reconstruct import reconstruct
from compress.transforms.rewrite.kinds.grouped import grouped_effective_weight

from reconstruct_helpers import ConvNet, batches, calibrated, logit_error

EXACT = 1e-4  # float32 held-out logits, relative L2
TINY_RIDGE = 1e-10  # exactness is checked where the ridge's pull towards the perturbed weights is negligible


def _models():
    calib = batches(4, seed=1)
    original = calibrated(ConvNet(width=16), calib)
    return original, copy.deepcopy(original), calib, batches(3, seed=2)


@pytest.mark.parametrize("kind,params,fitted", [("separable", {"T": 1}, "conv2.pointwise"),
                                                ("grouped", {"groups": 4}, "conv2.conv")])
def test_rewrite_then_reconstruct_does_not_increase_error(kind, params, fitted):
    original, model, calib, held_out = _models()
    compress.rewrite(model, kind, layers=["conv2"], **params)
    rewritten = logit_error(model, original, held_out)
    records = {r.layer: r for r in reconstruct(model, original, calib, verbose=False)}
    assert records["conv2"].fitted == fitted and records["conv2"].status == "fitted"
    assert records["conv2"].error_after < records["conv2"].error_before
    assert logit_error(model, original, held_out) <= rewritten


def test_exact_separable_rewrite_with_perturbed_pointwise_is_restored():
    original, model, calib, held_out = _models()
    compress.rewrite(model, "separable", layers=["conv2"], T=9, allow_growth=True)  # T = K*K: exact
    with torch.no_grad():
        pw = model.conv2.pointwise.weight
        pw.add_(0.5 * pw.std() * torch.randn_like(pw))
    assert logit_error(model, original, held_out) > 0.01
    reconstruct(model, original, calib, ridge=TINY_RIDGE, verbose=False)
    assert logit_error(model, original, held_out) < EXACT


def test_exact_grouped_rewrite_is_restored_through_its_permutes():
    original, model, calib, held_out = _models()
    compress.rewrite(model, "grouped", layers=["conv2"], groups=4)
    assert hasattr(model.conv2, "permute_out")  # the output order goes through a permute module
    with torch.no_grad():  # make the original exactly what the grouped rewrite can represent
        original.conv2.weight.copy_(grouped_effective_weight(model.conv2))
        grouped = model.conv2.conv.weight
        grouped.add_(0.5 * grouped.std() * torch.randn_like(grouped))
    calibrated(original, calib)
    model.bn2.load_state_dict(original.bn2.state_dict())
    assert logit_error(model, original, held_out) > 0.01
    records = {r.layer: r for r in reconstruct(model, original, calib, ridge=TINY_RIDGE, verbose=False)}
    assert records["conv2"].fitted == "conv2.conv" and records["conv2"].status == "fitted"
    assert logit_error(model, original, held_out) < EXACT
