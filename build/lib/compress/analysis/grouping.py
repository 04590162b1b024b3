"""Partition a layer's channels into equal-size groups that keep correlated channels together.

Input everywhere is an affinity matrix ``A = |corr|`` of shape ``(C, C)`` (float64, symmetric, non-negative)
whose diagonal is ignored. The *score* of a partition is the fraction of the off-diagonal mass of ``A`` that
falls inside groups: 1.0 keeps every interaction, ``(C/g - 1)/(C - 1)`` is what a random partition keeps.

Method (balanced spectral clustering + swap refinement). The normalised affinity ``D^-1/2 A D^-1/2`` has its
``g`` leading eigenvectors spread over the ``g`` strongest blocks, so rows of that embedding (unit-normalised,
Ng-Jordan-Weiss) cluster by block globally. Equal sizes are enforced with a capacity-constrained k-means
(nearest-centroid assignment in order of distance while a group has room). Finally pairwise swaps are
applied while they increase the kept mass (exact hill climbing on the score; one vectorised ``(C, C)`` gain
matrix per round of swaps). Agglomerative clustering with size caps was rejected: its merges are greedy
and irreversible, and the size cap forces arbitrary merges at the end; spectral sees the whole matrix at
once and the swap pass repairs what the equal-size constraint broke.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["affinity", "group_score", "score_upper_bound", "balanced_partition", "supported_group_count",
           "spectral_basis", "check_partition"]

_F64 = torch.float64


def affinity(corr: torch.Tensor) -> torch.Tensor:
    """``|corr|`` with a zero diagonal, float64, ``(C, C)``."""
    a = corr.detach().to(_F64).abs().clone()
    a.fill_diagonal_(0.0)
    return a


def check_partition(partition: list[list[int]], channels: int) -> torch.Tensor:
    """Labels ``(C,)`` of a partition; ``ValueError`` unless it covers ``range(channels)`` exactly once."""
    labels = torch.full((channels,), -1, dtype=torch.long)
    for g, group in enumerate(partition):
        for c in group:
            if not 0 <= int(c) < channels or labels[int(c)] >= 0:
                raise ValueError(f"channel {c} is out of range or appears twice (C={channels})")
            labels[int(c)] = g
    if bool((labels < 0).any()):
        raise ValueError(f"channels {(labels < 0).nonzero().flatten().tolist()[:8]} are in no group")
    return labels


def _kept(a: torch.Tensor, labels: torch.Tensor) -> float:
    same = labels[:, None] == labels[None, :]
    return float(a[same].sum())


def group_score(a: torch.Tensor, partition: list[list[int]]) -> float:
    """Fraction of off-diagonal affinity kept inside the groups of ``partition`` (1.0 when ``A`` is all zero)."""
    labels = check_partition(partition, a.shape[0])
    total = float(a.sum())
    return 1.0 if total <= 0 else _kept(a, labels) / total


def score_upper_bound(a: torch.Tensor, group_size: int) -> float:
    """An upper bound on the score of *any* partition into groups of ``group_size``.

    Channel ``i`` keeps at most its ``group_size - 1`` largest affinities. The bound never increases as
    groups shrink, so a scan over group counts can stop at the first count whose bound is too low.
    """
    total = float(a.sum())
    if total <= 0:
        return 1.0
    if group_size <= 1:
        return 0.0
    top = a.topk(min(group_size - 1, a.shape[0]), dim=1).values
    return float(top.sum()) / total


def spectral_basis(a: torch.Tensor) -> torch.Tensor:
    """Eigenvectors of ``D^-1/2 A D^-1/2`` as columns, leading (largest eigenvalue) first: ``(C, C)``."""
    d = a.sum(1)
    inv = torch.where(d > 0, d.clamp_min(1e-300).rsqrt(), torch.zeros_like(d))
    _, vecs = torch.linalg.eigh(inv[:, None] * a * inv[None, :])
    return vecs.flip(1)


def _capacity_assign(dist: torch.Tensor, size: int) -> torch.Tensor:
    """Assign each row to a column, nearest pairs first, at most ``size`` rows per column: labels ``(C,)``."""
    rows, groups = dist.shape
    labels = [-1] * rows
    fill = [0] * groups
    done = 0
    for flat in dist.flatten().argsort().tolist():  # stops long before the end: ~C pairs are usually enough
        r, g = divmod(flat, groups)
        if labels[r] < 0 and fill[g] < size:
            labels[r], fill[g], done = g, fill[g] + 1, done + 1
            if done == rows:
                break
    return torch.tensor(labels, dtype=torch.long)


def _balanced_kmeans(x: torch.Tensor, groups: int, gen: torch.Generator, iters: int = 25) -> torch.Tensor:
    """Equal-size k-means on the rows of ``x`` ``(C, k)`` with k-means++ seeding: labels ``(C,)``."""
    c = x.shape[0]
    centers = [int(torch.randint(c, (1,), generator=gen))]
    for _ in range(groups - 1):
        d2 = torch.cdist(x, x[centers]).amin(1).square()
        d2[centers] = 0.0
        if float(d2.sum()) <= 0:  # all remaining rows coincide with a centre: draw uniformly among them
            d2 = torch.ones(c, dtype=_F64).index_fill_(0, torch.tensor(centers), 0.0)
        centers.append(int(torch.multinomial(d2, 1, generator=gen)))
    cent = x[centers].clone()
    labels = torch.full((c,), -1, dtype=torch.long)
    for _ in range(iters):
        new = _capacity_assign(torch.cdist(x, cent), c // groups)
        if bool((new == labels).all()):
            break
        labels = new
        cent = torch.zeros_like(cent).index_add_(0, labels, x) / (c // groups)
    return labels


def _refine_by_swaps(a: torch.Tensor, labels: torch.Tensor, groups: int, max_rounds: int = 25) -> torch.Tensor:
    """Swap channel pairs across groups while the kept affinity increases.

    Each round computes the full gain matrix once (``(C, C)``), takes every channel's best partner, and applies
    those swaps best-first after re-checking each gain exactly against the updated state (O(1) per check,
    O(C) per applied swap); a channel moves at most once per round. Every applied swap strictly increases
    the kept affinity; rounds stop when one gains less than 1e-6 of the total or after ``max_rounds``
    (late rounds on unstructured layers gain ~1e-4 each and cost a full gain matrix).
    """
    labels = labels.clone()
    s = a @ F.one_hot(labels, groups).to(_F64)  # s[i, k]: affinity of channel i to group k
    # numpy views share memory with the tensors: cheap scalar access in the per-swap loop
    s_np, a_np, lab_np = s.numpy(), a.numpy(), labels.numpy()
    tol = 1e-12 * float(a.sum())
    for _ in range(max_rounds):
        p = s[:, labels] - s.gather(1, labels[:, None])  # p[i, j] = s[i, g_j] - s[i, g_i]
        gain = p + p.T - 2 * a
        gain[labels[:, None] == labels[None, :]] = float("-inf")
        best, partner = gain.max(1)
        moved: set[int] = set()
        gained = 0.0
        order = best.argsort(descending=True)
        for i, b, j in zip(order.tolist(), best[order].tolist(), partner[order].tolist()):
            if b <= tol:
                break
            if i in moved or j in moved:
                continue
            gi, gj = lab_np[i], lab_np[j]
            g = s_np[i, gj] - s_np[i, gi] + s_np[j, gi] - s_np[j, gj] - 2 * a_np[i, j]
            if g <= tol:
                continue
            delta = a_np[:, j] - a_np[:, i]
            s_np[:, gi] += delta
            s_np[:, gj] -= delta
            lab_np[i], lab_np[j] = gj, gi
            moved.update((i, j))
            gained += g
        if gained <= 1e6 * tol:
            break
    return labels


def _to_partition(labels: torch.Tensor, groups: int) -> list[list[int]]:
    parts = [sorted((labels == g).nonzero().flatten().tolist()) for g in range(groups)]
    return sorted(parts, key=lambda p: p[0])


def balanced_partition(a: torch.Tensor, groups: int, *, seed: int = 0, restarts: int = 3,
                       basis: torch.Tensor | None = None) -> list[list[int]]:
    """Split ``C`` channels into ``groups`` groups of ``C // groups`` keeping as much affinity inside as possible.

    Args:
        a: affinity ``(C, C)`` (see :func:`affinity`).
        groups: number of groups; must divide ``C``.
        seed: seed of the k-means++ draws (the result is deterministic for a given seed).
        restarts: k-means restarts; the best score after refinement wins.
        basis: :func:`spectral_basis` of ``a``, to reuse across group counts.

    Returns:
        The groups, each sorted ascending, ordered by their smallest channel.
    """
    c = a.shape[0]
    if groups < 1 or c % groups:
        raise ValueError(f"groups={groups} must be a positive divisor of the channel count {c}")
    if groups == 1 or groups == c:
        return [list(range(c))] if groups == 1 else [[i] for i in range(c)]
    basis = spectral_basis(a) if basis is None else basis
    emb = basis[:, :groups]
    emb = emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)
    gen = torch.Generator().manual_seed(seed)
    best, best_kept = None, float("-inf")
    for _ in range(restarts):
        labels = _refine_by_swaps(a, _balanced_kmeans(emb, groups, gen), groups)
        kept = _kept(a, labels)
        if kept > best_kept:
            best, best_kept = labels, kept
    return _to_partition(best, groups)


def supported_group_count(a: torch.Tensor, *, min_score: float, seed: int = 0,
                          basis: Callable[[], torch.Tensor] | None = None) -> int:
    """The largest divisor ``g`` of ``C`` whose balanced partition keeps at least ``min_score`` of the affinity.

    Divisors are scanned upwards; the scan stops when :func:`score_upper_bound` proves no larger ``g`` can
    reach ``min_score``. Returns 1 when no grouping is supported, and ``C`` when ``A`` is all zero (every
    channel constant: any grouping keeps "everything", consistently with :func:`group_score`).

    Args:
        a: affinity ``(C, C)``.
        min_score: the fraction of affinity a partition must keep.
        seed: k-means++ seed.
        basis: returns :func:`spectral_basis` of ``a`` (called only if some ``g`` needs a partition).
    """
    c = a.shape[0]
    basis = basis or functools.cache(lambda: spectral_basis(a))
    if float(a.sum()) <= 0:
        return c  # nothing interacts: every grouping keeps everything (score 1.0)
    best = 1
    for g in (d for d in range(2, c + 1) if c % d == 0):
        if score_upper_bound(a, c // g) < min_score:
            break
        part = balanced_partition(a, g, seed=seed, basis=basis())
        if group_score(a, part) >= min_score:
            best = g
    return best
