"""Balanced co-clustering of a conv's (output, input) channel energy, for the grouped rewrite.

A grouped conv with ``g`` groups keeps only ``g`` diagonal blocks of the (permuted) weight. To lose as little as
possible we look for an assignment of output channels and input channels to ``g`` equal-sized groups that
maximises the weight energy ``E[o, i] = sum over the kernel of W[o, i]**2`` inside matching groups.

Heuristic (the exact problem is NP-hard):

1. Spectral co-clustering init (Dhillon 2001): embed rows and columns with the top ``g`` singular vectors of
   ``D_r^{-1/2} E D_c^{-1/2}``; channels of one block share an embedding when ``E`` is exactly block-diagonal
   under some permutation, so balanced k-means on the joint embedding recovers the blocks.
2. Alternating refinement on the true objective: with the column groups fixed, each row's score for group
   ``a`` is its energy into columns of ``a``; rows are assigned greedily under the size constraint and then
   improved by best pairwise swaps; likewise for the columns. The best assignment seen is kept.
"""
from __future__ import annotations

import torch

__all__ = ["balanced_coclusters", "kept_energy", "perms_from_labels", "labels_from_perm"]


def kept_energy(energy: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> float:
    """Fraction of ``energy (N, M)`` inside matching groups (``rows (N,)``, ``cols (M,)`` group labels)."""
    total = float(energy.sum())
    if total == 0.0:
        return 1.0
    groups = int(max(rows.max(), cols.max())) + 1
    into = energy.double() @ _onehot(cols, groups)  # (N, g): each row's energy into each column group
    return float(into.gather(1, rows[:, None]).sum()) / total


def perms_from_labels(rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Permutations that sort channels by group: ``out_perm (N,)``, ``in_perm (M,)`` (stable within a group)."""
    return torch.argsort(rows, stable=True), torch.argsort(cols, stable=True)


def labels_from_perm(perm: torch.Tensor, groups: int) -> torch.Tensor:
    """Inverse of :func:`perms_from_labels` for one side: channel ``perm[j]`` gets group ``j // (C / groups)``."""
    labels = torch.empty_like(perm)
    labels[perm] = torch.arange(perm.numel()) // (perm.numel() // groups)
    return labels


def balanced_coclusters(energy: torch.Tensor, groups: int, *, rows: torch.Tensor | None = None,
                        cols: torch.Tensor | None = None, rounds: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Assign rows and columns of ``energy`` to ``groups`` equal-sized groups keeping most energy on the diagonal.

    Args:
        energy: ``(N, M)`` non-negative; ``groups`` must divide ``N`` and ``M``.
        groups: number of groups ``g``.
        rows / cols: fixed labels for one side (e.g. suggested by an analysis); only the other side is
            optimised. Both given (e.g. two independent partitions): memberships stay, and the column groups are
            renumbered so that matching groups hold the most energy.
        rounds: alternating refinement rounds.

    Returns:
        ``rows (N,)`` and ``cols (M,)`` int64 labels in ``[0, g)``, each label used ``N/g`` (``M/g``) times.
    """
    e = energy.double()
    n, m = e.shape
    if groups == 1:
        return torch.zeros(n, dtype=torch.long), torch.zeros(m, dtype=torch.long)
    fixed_rows, fixed_cols = rows is not None, cols is not None
    if fixed_rows and fixed_cols:
        return rows, _match_groups(e, rows, cols, groups)
    if fixed_rows:
        return rows, _refine(e.T, rows, m // groups, groups)
    if fixed_cols:
        return _refine(e, cols, n // groups, groups), cols
    rows, cols = _spectral_init(e, groups)
    best = (kept_energy(e, rows, cols), rows, cols)
    for _ in range(rounds):
        new_rows = _refine(e, cols, n // groups, groups)
        new_cols = _refine(e.T, new_rows, m // groups, groups)
        score = kept_energy(e, new_rows, new_cols)
        if score > best[0] + 1e-12:
            best = (score, new_rows, new_cols)
        if torch.equal(new_rows, rows) and torch.equal(new_cols, cols):
            break
        rows, cols = new_rows, new_cols
    return best[1], best[2]


def _onehot(labels: torch.Tensor, groups: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, groups).double()


def _match_groups(e: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, groups: int) -> torch.Tensor:
    """``cols`` renumbered (memberships unchanged) so matching row and column groups share the most energy."""
    # (g, g): the energy between column group b and row group a
    blocks = _onehot(cols, groups).T @ e.T @ _onehot(rows, groups)
    return _swap_improve(blocks, _greedy_assign(blocks, 1))[cols]


def _refine(e: torch.Tensor, other: torch.Tensor, cap: int, groups: int) -> torch.Tensor:
    """Best balanced labels for the rows of ``e`` given the column labels ``other``."""
    scores = e @ _onehot(other, groups)  # (n, g): energy of each row into each column group
    return _swap_improve(scores, _greedy_assign(scores, cap))


def _greedy_assign(scores: torch.Tensor, cap: int) -> torch.Tensor:
    """Assign each item to a group, highest score first, at most ``cap`` items per group."""
    n, g = scores.shape
    labels = [-1] * n
    room = [cap] * g
    left = n
    for flat in torch.argsort(scores.flatten(), descending=True, stable=True).tolist():
        i, a = divmod(flat, g)
        if labels[i] < 0 and room[a] > 0:
            labels[i] = a
            room[a] -= 1
            left -= 1
            if left == 0:
                break
    return torch.tensor(labels, dtype=torch.long)


def _swap_improve(scores: torch.Tensor, labels: torch.Tensor, max_swaps: int | None = None) -> torch.Tensor:
    """Apply best improving pairwise swaps (sizes stay balanced) until none gains or ``max_swaps`` is hit.

    Swapping item ``i`` (group ``a``) with item ``j`` (group ``b``) gains ``D[i, b] + D[j, a]`` where
    ``D[i, c] = scores[i, c] - scores[i, label_i]``; the two terms are independent, so the best swap between
    groups ``a`` and ``b`` pairs the best mover out of each, found in ``O(n g)`` per swap.
    """
    labels = labels.clone()
    n, g = scores.shape
    tol = 1e-12 * float(scores.abs().sum()) + 1e-300
    rows = torch.arange(n)
    for _ in range(n if max_swaps is None else max_swaps):
        delta = scores - scores[rows, labels][:, None]  # (n, g)
        best = torch.full((g, g), float("-inf"), dtype=scores.dtype)
        best = best.scatter_reduce(0, labels[:, None].expand(n, g), delta, reduce="amax")  # [a, b]
        gain = best + best.T
        gain.fill_diagonal_(float("-inf"))
        flat = int(gain.argmax())
        if float(gain.flatten()[flat]) <= tol:
            break
        a, b = divmod(flat, g)
        i = int(torch.where(labels == a, delta[:, b], torch.tensor(float("-inf"), dtype=scores.dtype)).argmax())
        j = int(torch.where(labels == b, delta[:, a], torch.tensor(float("-inf"), dtype=scores.dtype)).argmax())
        labels[i], labels[j] = b, a
    return labels


def _spectral_init(e: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    n, m = e.shape
    dr = e.sum(1).clamp_min(1e-300).rsqrt()
    dc = e.sum(0).clamp_min(1e-300).rsqrt()
    u, vh = _top_singular_vectors(e * dr[:, None] * dc[None, :], groups)
    k = min(groups, u.shape[1])
    z = torch.cat([u[:, :k] * dr[:, None], vh[:k].T * dc[:, None]])
    z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-300)
    labels = _balanced_kmeans(z, groups, n)
    return labels[:n], labels[n:]


def _top_singular_vectors(a: torch.Tensor, k: int, iters: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Leading ``k`` singular vectors ``u (n, k)``, ``vh (k, m)`` of ``a (n, m)``.

    Small ``k``: randomized subspace iteration with a fixed seed (deterministic, unlike ``torch.svd_lowrank``,
    which draws from the global generator); otherwise a full SVD.
    """
    q = k + 8
    if 4 * q >= min(a.shape):
        u, _, vh = torch.linalg.svd(a, full_matrices=False)
        return u[:, :k], vh[:k]
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(a @ torch.randn(a.shape[1], q, generator=gen, dtype=a.dtype)).Q
    for _ in range(iters):
        basis = torch.linalg.qr(a @ torch.linalg.qr(a.T @ basis).Q).Q
    u, _, vh = torch.linalg.svd(basis.T @ a, full_matrices=False)
    return (basis @ u)[:, :k], vh[:k]


def _balanced_kmeans(z: torch.Tensor, groups: int, n_rows: int, iters: int = 5) -> torch.Tensor:
    """k-means on the joint embedding with ``N/g`` rows and ``M/g`` columns per cluster."""
    centers = _farthest_points(z, groups)
    caps = (n_rows // groups, (z.shape[0] - n_rows) // groups)
    labels = torch.zeros(z.shape[0], dtype=torch.long)
    for _ in range(iters):
        scores = -torch.cdist(z, centers).pow(2)
        new = torch.cat([_greedy_assign(scores[:n_rows], caps[0]), _greedy_assign(scores[n_rows:], caps[1])])
        if torch.equal(new, labels):
            break
        labels = new
        centers = (_onehot(labels, groups).T @ z) / _onehot(labels, groups).sum(0)[:, None].clamp_min(1)
    return labels


def _farthest_points(z: torch.Tensor, k: int) -> torch.Tensor:
    chosen = [0]
    dist = torch.cdist(z, z[:1]).squeeze(1)
    for _ in range(1, k):
        nxt = int(dist.argmax())
        chosen.append(nxt)
        dist = torch.minimum(dist, torch.cdist(z, z[nxt:nxt + 1]).squeeze(1))
    return z[chosen].clone()
