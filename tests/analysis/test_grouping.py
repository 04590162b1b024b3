"""Correlation structure: block-diagonal layers are recovered exactly; degenerate inputs stay finite."""
from __future__ import annotations

import pytest
import torch

from analysis_helpers import adjusted_rand_index, block_model, labels_of, random_batches
from compress.analysis import analyze
from compress.analysis import grouping
from compress.errors import CompressError


def _block_analysis(groups: int, per_group: int, seed: int = 0):
    model, truth, c_in = block_model(groups, per_group, seed=seed)
    batches = random_batches(4, batch=8, shape=(c_in, 16, 16), seed=seed + 1)
    return analyze(model, batches, verbose=False), truth


def test_ari_helper_sanity():
    assert adjusted_rand_index([0, 0, 1, 1], [5, 5, 7, 7]) == pytest.approx(1.0)
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) < 0.0  # anti-aligned: below chance
    assert adjusted_rand_index([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]) == pytest.approx(0.2424, abs=1e-3)


@pytest.mark.parametrize("groups, per_group, seed", [(2, 6, 0), (3, 4, 1), (4, 4, 2), (4, 3, 3)])
def test_block_diagonal_recovered(groups, per_group, seed):
    analysis, truth = _block_analysis(groups, per_group, seed)
    layer = analysis.layers[0]
    part = analysis.suggest_groups(layer, groups)
    assert sorted(len(g) for g in part) == [per_group] * groups
    assert adjusted_rand_index(labels_of(part, groups * per_group), truth) == pytest.approx(1.0)
    assert analysis.group_score(layer, part) > 0.9
    assert analysis.supported_groups(layer) == groups
    perm = analysis.group_permutation(layer, groups)
    assert sorted(perm.tolist()) == list(range(groups * per_group))
    assert all(len(set(truth[perm[i:i + per_group]].tolist())) == 1 for i in range(0, len(perm), per_group))


def test_pairs_follow_the_blocks():
    analysis, truth = _block_analysis(2, 6)
    layer = analysis.layers[0]
    corr = analysis.correlation(layer)
    assert torch.allclose(corr, corr.T) and torch.all(corr.diagonal() == 1.0)
    strong = analysis.redundant_pairs(layer, 0.5)
    weak = analysis.low_correlation_pairs(layer, 0.1)
    assert strong and all(truth[i] == truth[j] and i < j for i, j, _ in strong)
    assert len(weak) == 36 and all(truth[i] != truth[j] for i, j, _ in weak)  # 6 x 6 cross-block pairs
    assert [abs(v) for *_, v in strong] == sorted((abs(v) for *_, v in strong), reverse=True)


def test_score_definition_and_bound():
    a = grouping.affinity(torch.tensor([[1.0, 0.5, 0.1, 0.0], [0.5, 1.0, 0.0, 0.2],
                                        [0.1, 0.0, 1.0, 0.4], [0.0, 0.2, 0.4, 1.0]]))
    assert grouping.group_score(a, [[0, 1], [2, 3]]) == pytest.approx(0.9 / 1.2)
    assert grouping.group_score(a, [[0, 1, 2, 3]]) == 1.0
    assert grouping.group_score(a, [[0], [1], [2], [3]]) == 0.0
    best = max(grouping.group_score(a, p) for p in ([[0, 1], [2, 3]], [[0, 2], [1, 3]], [[0, 3], [1, 2]]))
    assert grouping.score_upper_bound(a, 2) >= best
    assert grouping.balanced_partition(a, 2) == [[0, 1], [2, 3]]
    with pytest.raises(ValueError):
        grouping.check_partition([[0, 1], [1, 2]], 4)


def test_constant_channels_have_zero_correlation_not_nan():
    conv = torch.nn.Conv2d(3, 4, 1)
    with torch.no_grad():
        conv.weight[1] = 0.0  # channel 1 is its bias everywhere
    analysis = analyze(torch.nn.Sequential(conv), random_batches(2, batch=4), verbose=False)
    corr = analysis.correlation("0")
    assert torch.isfinite(corr).all()
    assert torch.all(corr[1] == 0.0) and torch.all(corr[:, 1] == 0.0)
    assert not any(1 in (i, j) for i, j, _ in analysis.low_correlation_pairs("0", 1.0))
    part = analysis.suggest_groups("0", 2)
    assert sorted(c for g in part for c in g) == [0, 1, 2, 3]


def test_bad_grouping_requests_are_user_errors():
    analysis, _ = _block_analysis(2, 6)
    with pytest.raises(CompressError, match="divisor"):
        analysis.suggest_groups("0", 5)
    with pytest.raises(CompressError, match="partition"):
        analysis.group_score("0", [[0, 1, 2]])
    with pytest.raises(CompressError, match="no conv layer"):
        analysis.correlation("nope")
