"""Low-rank helpers shared by the rewrites: balanced SVD factors, tail-energy errors, rank-from-budget, CP-ALS.

Everything here works in float64 (callers cast results back to the conv's dtype) so that "exact" rewrites are
exact to rounding and budgets are not decided by float32 noise.
"""
from __future__ import annotations

import torch

__all__ = ["relative_error", "svd_factors", "tail_errors", "smallest_rank", "cp_als"]


def relative_error(approx: torch.Tensor, reference: torch.Tensor) -> float:
    """Relative Frobenius (L2) error ``||approx - reference|| / ||reference||``.

    Args:
        approx: any shape.
        reference: same shape as ``approx``.

    Returns:
        The ratio as a float; ``0.0`` when both are zero and ``inf`` when only the reference is zero.
    """
    diff = (approx.double() - reference.double()).norm().item()
    ref = reference.double().norm().item()
    if ref == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / ref


def svd_factors(a: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` factors ``left @ right ≈ a`` (Eckart-Young), singular values split as ``sqrt(S)``.

    Args:
        a: ``(..., m, n)``, any float dtype (computed in float64).
        rank: number of terms ``r >= 1``; terms beyond ``min(m, n)`` are zero columns/rows.

    Returns:
        ``left (..., m, r)`` and ``right (..., r, n)`` in float64.
    """
    u, s, vh = torch.linalg.svd(a.double(), full_matrices=False)
    k = min(rank, s.shape[-1])
    root = s[..., :k].sqrt()
    left = u[..., :, :k] * root.unsqueeze(-2)
    right = vh[..., :k, :] * root.unsqueeze(-1)
    if rank > k:  # pad with zero terms so callers always get `rank` of them
        left = torch.cat([left, left.new_zeros(*left.shape[:-1], rank - k)], dim=-1)
        right = torch.cat([right, right.new_zeros(*right.shape[:-2], rank - k, right.shape[-1])], dim=-2)
    return left, right


def tail_errors(singular_values: torch.Tensor, total_sq: float | None = None) -> torch.Tensor:
    """Relative reconstruction error when every batch entry keeps its first ``r`` singular values.

    Args:
        singular_values: ``(..., k)`` descending along the last axis (a batch of SVDs truncated together).
        total_sq: squared Frobenius norm of the whole reference; default: ``sum(singular_values**2)``.

    Returns:
        ``(k + 1,)`` float64: entry ``r`` is ``sqrt(sum over the batch of the dropped s_i**2 / total_sq)``.
    """
    s2 = singular_values.double().pow(2).reshape(-1, singular_values.shape[-1]).sum(0)  # (k,)
    total = float(s2.sum()) if total_sq is None else float(total_sq)
    if total == 0.0:
        return torch.zeros(s2.numel() + 1, dtype=torch.float64)
    dropped = torch.cat([s2.flip(0).cumsum(0).flip(0), s2.new_zeros(1)])  # dropped[r] = sum_{i>=r} s_i^2
    return (dropped / total).clamp_min(0).sqrt()


def smallest_rank(errors: torch.Tensor, max_error: float) -> int:
    """Smallest ``r >= 1`` with ``errors[r] <= max_error`` (``errors`` from :func:`tail_errors`).

    Falls back to the full rank ``len(errors) - 1`` (which is exact) when no smaller one meets the budget.
    """
    ok = (errors[1:] <= max_error + 1e-12).nonzero()
    return int(ok[0]) + 1 if ok.numel() else errors.numel() - 1


def _unfold(t: torch.Tensor, mode: int) -> torch.Tensor:
    return t.movedim(mode, 0).reshape(t.shape[mode], -1)


def _init_factor(t: torch.Tensor, mode: int, rank: int, gen: torch.Generator) -> torch.Tensor:
    # Leading left singular vectors of the unfolding (HOSVD initialisation); small random columns where the
    # unfolding has fewer than `rank` directions, so ALS can still use every term.
    x = _unfold(t, mode)
    evals, evecs = torch.linalg.eigh(x @ x.T)  # left singular vectors via the small Gram matrix
    k = min(rank, x.shape[0])
    f = evecs.flip(1)[:, :k] * evals.flip(0)[:k].clamp_min(0).pow(0.25).clamp_min(1e-12)
    if rank > k:
        extra = torch.randn(t.shape[mode], rank - k, generator=gen, dtype=t.dtype).to(t.device)
        f = torch.cat([f, extra * 1e-3], dim=1)
    return f


def _solve(gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``rhs @ inv(gram)`` for a symmetric PSD ``gram (r, r)``, with a tiny ridge against rank deficiency."""
    ridge = 1e-13 * float(gram.diagonal().sum()) + 1e-300
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + ridge * eye, rhs.T).T


def cp_als(t: torch.Tensor, rank: int, *, iters: int = 100, rtol: float = 1e-4,
           seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Rank-``rank`` CP decomposition of a 3-way tensor by alternating least squares.

    ``t[i, j, l] ≈ sum_r a[i, r] * b[j, r] * c[l, r]``. Initialised from the HOSVD (deterministic), then up to
    ``iters`` ALS sweeps (normal equations: one ``einsum`` and an ``r x r`` solve per factor), stopping when a
    sweep improves the error by less than the fraction ``rtol`` (a plateau; an exactly representable tensor
    keeps improving geometrically and runs on); the best iterate is returned.

    Args:
        t: ``(I, J, L)``; computed in float64.
        rank: number of terms.
        iters: maximum ALS sweeps.
        rtol: stop when a sweep reduces the error by less than this fraction.
        seed: seeds the random columns used when an unfolding has fewer directions than ``rank``.

    Returns:
        ``a (I, r)``, ``b (J, r)``, ``c (L, r)`` in float64.
    """
    t = t.double()
    gen = torch.Generator().manual_seed(seed)
    a, b, c = (_init_factor(t, m, rank, gen) for m in range(3))
    norm = max(t.norm().item(), 1e-300)
    best, best_err, last = (a, b, c), float("inf"), float("inf")
    for _ in range(iters):
        a = _solve((b.T @ b) * (c.T @ c), torch.einsum("ijl,jr,lr->ir", t, b, c))
        b = _solve((a.T @ a) * (c.T @ c), torch.einsum("ijl,ir,lr->jr", t, a, c))
        c = _solve((a.T @ a) * (b.T @ b), torch.einsum("ijl,ir,jr->lr", t, a, b))
        err = (t - torch.einsum("ir,jr,lr->ijl", a, b, c)).norm().item() / norm
        if err < best_err:
            best, best_err = (a.clone(), b.clone(), c.clone()), err
        if err < 1e-13 or last - err < rtol * last:
            break
        last = err
    return best
