"""Pairing a compressed layer with the original's: kept channels from weights, rewrites' last layers, guards."""
from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn

from compress.transforms.modules import ChannelPermute
from compress.transforms.reconstruct.correspondence import identity_plausible, match_rows, pair_layer


def test_match_rows_recovers_pruned_and_permuted_channels():
    ref = torch.randn(8, 6, 3, 3)
    kept_out, kept_in = torch.tensor([6, 1, 3, 0]), torch.tensor([5, 2, 0])
    assert torch.equal(match_rows(ref[kept_out][:, kept_in], ref), kept_out)
    fc = torch.randn(10, 16)
    assert torch.equal(match_rows(fc[:, [3, 1, 2]], fc), torch.arange(10))
    changed = ref[kept_out][:, kept_in] + 1e-3
    assert match_rows(changed, ref) is None
    assert match_rows(torch.randn(9, 6, 3, 3), ref) is None  # wider than the original


def _pair(model, original, name, **kw):
    return pair_layer(model, original, name, **kw)


def test_pairings_of_plain_pruned_compound_and_foreign_layers():
    original = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 8, 3), act=nn.ReLU(), head=nn.Conv2d(8, 4, 1)))
    model = copy.deepcopy(original)
    with torch.no_grad():
        model.conv.weight.copy_(torch.randn_like(model.conv.weight))  # same width, new weights: assumed
    p = _pair(model, original, "conv")
    assert p.reason is None and p.assumed and torch.equal(p.channels, torch.arange(8))

    pruned = nn.Conv2d(3, 3, 3)
    with torch.no_grad():
        pruned.weight.copy_(original.conv.weight[[7, 2, 4]])
    model.conv = pruned
    p = _pair(model, original, "conv")
    assert not p.assumed and p.channels.tolist() == [7, 2, 4]
    pruned.weight.data += 1.0
    assert "cannot be recovered" in _pair(model, original, "conv").reason
    assert _pair(model, original, "conv", channels={"conv": [1, 2, 3]}).channels.tolist() == [1, 2, 3]
    assert "indices" in _pair(model, original, "conv", channels={"conv": [1, 2, 9]}).reason

    perm = torch.tensor([2, 0, 3, 1])  # compound output j = conv channel perm[j]
    model.head = nn.Sequential(OrderedDict(conv=nn.Conv2d(8, 4, 1), permute_out=ChannelPermute(perm)))
    p = _pair(model, original, "head")
    assert p.fitted == "head.conv" and p.assumed
    assert torch.equal(p.channels[perm], torch.arange(4))  # conv channel perm[j] targets original channel j
    model.head = nn.Sequential(OrderedDict(conv=nn.Conv2d(8, 4, 1), permute_out=nn.Identity()))  # absorbed
    assert _pair(model, original, "head").fitted == "head.conv"
    model.head = nn.Sequential(nn.Conv2d(8, 4, 1), nn.ReLU())
    assert "not one conv" in _pair(model, original, "head").reason
    model.head = nn.Linear(8, 4)
    assert "where the original has a Conv2d" in _pair(model, original, "head").reason


def test_identity_plausible_tells_noise_from_a_permutation():
    target = torch.randn(500, 12)
    noisy = target + 0.5 * torch.randn_like(target)
    assert identity_plausible(noisy, target)
    assert not identity_plausible(noisy[:, torch.roll(torch.arange(12), 1)], target)
