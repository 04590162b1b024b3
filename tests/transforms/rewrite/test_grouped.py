"""Grouped rewrite: recovers hidden block structure exactly, errors follow kept energy, auto groups, analysis."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.errors import CompressError
import compress
from compress.transforms import ChannelPermute, rewrite, to_grouped
from compress.transforms.rewrite.cocluster import balanced_coclusters, kept_energy
from compress.transforms.rewrite.decompose import relative_error
from compress.transforms.rewrite.kinds.grouped import GroupedConfig, channel_energy, choose_groups, grouped_effective_weight


def _hidden_blocks(n: int, m: int, g: int, *, noise: float = 0.0, k: int = 3) -> tuple[nn.Conv2d, tuple]:
    """A conv whose weight is block-diagonal (g blocks) after an unknown permutation of both channel axes."""
    w = torch.zeros(n, m, k, k, dtype=torch.float64)
    for a in range(g):
        w[a * n // g:(a + 1) * n // g, a * m // g:(a + 1) * m // g] = torch.randn(n // g, m // g, k, k,
                                                                                   dtype=torch.float64)
    w += noise * torch.randn_like(w)
    out_perm, in_perm = torch.randperm(n), torch.randperm(m)
    conv = nn.Conv2d(m, n, k, padding=k // 2, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(w[out_perm][:, in_perm])
    return conv, (out_perm, in_perm)


@pytest.mark.parametrize("n, m, g", [(8, 12, 4), (16, 16, 2), (24, 12, 3)])
def test_hidden_block_diagonal_is_recovered_exactly(n, m, g):
    conv, _ = _hidden_blocks(n, m, g)
    x = torch.randn(2, m, 6, 6, dtype=torch.float64)
    new = to_grouped(conv, g)
    assert new.conv.groups == g
    assert relative_error(new(x), conv(x)) < 1e-12
    assert relative_error(grouped_effective_weight(new), conv.weight) < 1e-12


def test_given_perm_is_used_and_identity_perms_are_omitted():
    n, m, g = 8, 8, 2
    conv = nn.Conv2d(m, n, 3, padding=1, dtype=torch.float64)
    plain = to_grouped(conv, g, perm=(torch.arange(n), torch.arange(m)))
    assert [name for name, _ in plain.named_children()] == ["conv"]
    w = conv.weight.detach()
    assert torch.equal(plain.conv.weight[:4], w[:4, :4]) and torch.equal(plain.conv.weight[4:], w[4:, 4:])
    out_perm, in_perm = torch.randperm(n), torch.randperm(m)
    new = to_grouped(conv, g, perm=(out_perm, in_perm))
    assert isinstance(new.permute_in, ChannelPermute) and torch.equal(new.permute_in.perm, in_perm)
    x = torch.randn(1, m, 5, 5, dtype=torch.float64)
    expected = nn.functional.conv2d(x, grouped_effective_weight(new), conv.bias, padding=1)
    assert relative_error(new(x), expected) < 1e-12


def test_weight_error_is_sqrt_of_lost_energy_and_falls_with_fewer_groups():
    conv = nn.Conv2d(16, 16, 3, padding=1)
    errors, kept = [], []
    for g in (8, 4, 2, 1):
        config = GroupedConfig.plan(conv, groups=g)
        new = to_grouped(conv, g, perm=(config.out_perm, config.in_perm))
        errors.append(relative_error(grouped_effective_weight(new), conv.weight))
        kept.append(config.describe(conv)["energy_kept"])
        assert errors[-1] == pytest.approx((1 - kept[-1]) ** 0.5, abs=1e-5)
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert errors[-1] == 0.0 and kept[-1] == 1.0


def test_coclustering_beats_identity_order_on_noisy_blocks():
    conv, _ = _hidden_blocks(16, 16, 4, noise=0.05)
    energy = channel_energy(conv)
    rows, cols = balanced_coclusters(energy, 4)
    naive = torch.arange(16) // 4
    assert kept_energy(energy, rows, cols) > 0.95 > kept_energy(energy, naive, naive)
    assert torch.bincount(rows).tolist() == [4] * 4 and torch.bincount(cols).tolist() == [4] * 4


def test_auto_groups_picks_the_hidden_group_count():
    conv, _ = _hidden_blocks(16, 16, 4, noise=0.02)
    assert choose_groups(conv, 0.9) == 4
    assert GroupedConfig.plan(conv, groups="auto").groups == 4
    with pytest.raises(CompressError, match="keeps"):
        choose_groups(nn.Conv2d(16, 16, 3), 0.9)  # random weights keep about half at g = 2


def _hidden_group_net(g: int, per_group: int, *, blocky: bool = True) -> tuple[nn.Sequential, list]:
    """``0``: 1x1 conv whose outputs form ``g`` correlated blocks under a hidden permutation (each output reads its
    block's shared input factor plus a private noise input, as in the analysis tests' ``block_model``); ``1``: a
    1x1 conv reading only within those blocks, its outputs hidden-permuted too (``blocky=False``: dense random
    weights). Returns the net and 4 batches."""
    gen = torch.Generator().manual_seed(0)
    c, stride = g * per_group, per_group + 1
    hidden = torch.randperm(c, generator=gen)
    block, rank = hidden // per_group, hidden % per_group  # each channel's hidden block and place in it
    producer, consumer = nn.Conv2d(g * stride, c, 1, bias=False), nn.Conv2d(c, c, 1, bias=False)
    with torch.no_grad():
        producer.weight.zero_()
        for j in range(c):
            b = int(block[j])
            producer.weight[j, b * stride, 0, 0] = 0.7 + 0.6 * float(torch.rand(1, generator=gen))
            producer.weight[j, b * stride + 1 + int(rank[j]), 0, 0] = 0.3
        mask = (block[:, None] == block[None, :]).to(consumer.weight.dtype)[torch.randperm(c, generator=gen)]
        mask = mask if blocky else torch.ones_like(mask)
        consumer.weight.copy_((0.5 + torch.rand(c, c, generator=gen)).mul(mask)[..., None, None])
    batches = [(torch.randn(8, g * stride, 4, 4, generator=gen), torch.zeros(8, dtype=torch.long))
               for _ in range(4)]
    return nn.Sequential(producer, consumer).eval(), batches


def _chunks(perm, g: int) -> set[frozenset[int]]:
    """The groups a channel order lays out contiguously, as sets (their order is free)."""
    perm = [int(c) for c in perm]
    size = len(perm) // g
    return {frozenset(perm[k * size:(k + 1) * size]) for k in range(g)}


def _partition(analysis, layer: str, g: int) -> set[frozenset[int]]:
    return {frozenset(group) for group in analysis.suggest_groups(layer, g)}


def _random_kept(conv: nn.Conv2d, g: int, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    rows, cols = (torch.randperm(n, generator=gen) % g for n in (conv.out_channels, conv.in_channels))
    return kept_energy(channel_energy(conv), rows, cols)


def test_real_analysis_partitions_order_the_grouped_rewrite():
    g = 4
    net, batches = _hidden_group_net(g, per_group=4)
    analysis = compress.analyze(net, batches, verbose=False)
    config = GroupedConfig.plan(net[1], name="1", analysis=analysis, producer="0", groups=g)
    assert config.out_perm == tuple(analysis.group_permutation("1", g).tolist())
    assert _chunks(config.in_perm, g) == _partition(analysis, "0", g)  # its groups matched to the outputs'
    kept = config.describe(net[1])["energy_kept"]
    assert kept > 0.999  # the hidden blocks, found from activations alone
    assert kept > max(_random_kept(net[1], g, seed) for seed in range(5)) + 0.4  # random: about 1/g


def test_rewrite_finds_the_producer_for_the_input_order():
    g = 4
    net, batches = _hidden_group_net(g, per_group=4, blocky=False)  # weights alone do not show the blocks
    analysis = compress.analyze(net, batches, verbose=False)
    x = batches[0][0][:1]
    heuristic = GroupedConfig.plan(net[1], groups=g)
    assert _chunks(heuristic.in_perm, g) != _partition(analysis, "0", g)
    records = rewrite(net, "grouped", layers=["1"], analysis=analysis, example_inputs=x, groups=g, min_channels=1,
                      absorb=False)
    assert records[0].skipped is None and records[0].output_error is not None
    assert _chunks(net[1].permute_in.perm, g) == _partition(analysis, "0", g)


def test_stale_analysis_is_refused_per_layer():
    net, batches = _hidden_group_net(2, per_group=4)
    analysis = compress.analyze(net, batches, verbose=False)
    wider = nn.Conv2d(10, 16, 1)
    with pytest.raises(CompressError, match="re-run 'analyze'"):
        GroupedConfig.plan(wider, name="1", analysis=analysis, groups=2)


def test_output_dtype_shape_and_options():
    conv = nn.Conv2d(8, 12, 3, stride=2, padding=2, dilation=2)
    x = torch.randn(1, 8, 9, 9)
    new = to_grouped(conv, 4)
    out = new(x)
    assert out.shape == conv(x).shape and out.dtype == torch.float32
    assert (new.conv.stride, new.conv.padding, new.conv.dilation) == ((2, 2), (2, 2), (2, 2))


def test_rejects_bad_groups():
    with pytest.raises(CompressError, match="must divide"):
        to_grouped(nn.Conv2d(6, 8, 3), 4)
    with pytest.raises(CompressError, match="already grouped"):
        to_grouped(nn.Conv2d(8, 8, 3, groups=2), 2)
    with pytest.raises(CompressError):
        GroupedConfig(groups=0)
    with pytest.raises(CompressError, match="permutation"):
        GroupedConfig(groups=2, out_perm=(0, 0, 1, 2))


def test_orders_are_deterministic_and_leave_the_global_generator_alone():
    conv = nn.Conv2d(96, 96, 3)  # wide enough for the randomized singular-vector path
    torch.manual_seed(1)
    first = GroupedConfig.plan(conv, groups=2)
    state = torch.get_rng_state()
    torch.manual_seed(2)
    second = GroupedConfig.plan(conv, groups=2)
    assert (first.out_perm, first.in_perm) == (second.out_perm, second.in_perm)
    torch.set_rng_state(state)
    GroupedConfig.plan(conv, groups=2)
    assert torch.equal(torch.get_rng_state(), state)
