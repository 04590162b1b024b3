"""Streaming ridge least squares: the normal equations of ``Y ≈ X Wᵀ + b`` summed batch by batch in float64.

:class:`NormalEquations` keeps ``XᵀX``, ``XᵀY``, ``ΣX``, ``ΣY``, ``ΣY²`` and the row count, so its memory is
``O(D² + D·O)`` whatever the number of batches. With a bias the system is centred (covariances, intercept
``b = ȳ - W x̄``), which is better conditioned than an appended column of ones. Several independent systems of the
same size (the groups of a grouped conv) are solved together along a leading axis.

:meth:`NormalEquations.solve` adds a ridge ``λ = ridge · mean(diag(XᵀX))`` that pulls the solution towards a
prior weight (default zero), factorises with :func:`torch.linalg.cholesky_ex` and returns a :class:`Solution`
whose ``reason`` says why it is unusable (fewer rows than unknowns, non-finite data, Cholesky failure,
condition estimate above ``max_condition``) instead of raising. Pulled towards the layer's current weights, a
layer that is already exact stays exact at any ridge.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import CompressError

__all__ = ["NormalEquations", "Solution"]


@dataclass(frozen=True)
class Solution:
    """What :meth:`NormalEquations.solve` found.

    Attributes:
        weight: ``(O, D)`` (``(S, O, D)`` for ``systems=S``) float64, ``None`` when ``reason`` is set.
        bias: ``(O,)`` (``(S, O)``) float64; ``None`` without a bias or when ``reason`` is set.
        reason: why the system could not be solved reliably (``None``: solved).
        condition: condition-number estimate of the regularised Gram matrix, ``(max Lᵢᵢ / min Lᵢᵢ)²`` of its
            Cholesky factor (a lower bound of the 2-norm condition number; the largest over systems), ``inf``
            when the factorisation failed.
    """

    weight: torch.Tensor | None
    bias: torch.Tensor | None
    reason: str | None
    condition: float

    @property
    def ok(self) -> bool:
        """Whether the system was solved."""
        return self.reason is None


class NormalEquations:
    """Accumulates the least-squares system of ``Y ≈ X Wᵀ + b`` over batches of rows, in float64.

    Args:
        in_features: ``D``, the width of ``X``.
        out_features: ``O``, the width of ``Y``.
        systems: ``S`` independent systems solved side by side (inputs then carry a leading ``S`` axis);
            ``None``: one system, unbatched shapes.
        device: where the sums live (default CPU).
    """

    def __init__(self, *, in_features: int, out_features: int, systems: int | None = None,
                 device: torch.device | str | None = None) -> None:
        for name, value in (("in_features", in_features), ("out_features", out_features),
                            ("systems", 1 if systems is None else systems)):
            if not isinstance(value, int) or value < 1:
                raise CompressError(f"NormalEquations.{name}: expected an integer >= 1, got {value!r}")
        self.in_features, self.out_features, self.systems = in_features, out_features, systems
        s, d, o = systems or 1, in_features, out_features
        kw = dict(dtype=torch.float64, device=device)
        self.xtx = torch.zeros(s, d, d, **kw)
        self.xty = torch.zeros(s, d, o, **kw)
        self.x_sum = torch.zeros(s, d, **kw)
        self.y_sum = torch.zeros(s, o, **kw)
        self.y_sq = torch.zeros(s, o, **kw)
        self.count = 0

    def _batched(self, t: torch.Tensor, width: int, what: str) -> torch.Tensor:
        expected = (self.systems, "N", width) if self.systems else ("N", width)
        if t.dim() != len(expected) or t.shape[-1] != width or (self.systems and t.shape[0] != self.systems):
            raise CompressError(f"NormalEquations.update: {what} must have shape {expected}, got {tuple(t.shape)}")
        t = t.to(device=self.xtx.device, dtype=torch.float64)
        return t if self.systems else t.unsqueeze(0)

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows: ``x (N, D)`` inputs and ``y (N, O)`` targets (``(S, N, D)`` / ``(S, N, O)`` with systems)."""
        x, y = self._batched(x, self.in_features, "X"), self._batched(y, self.out_features, "Y")
        if x.shape[1] != y.shape[1]:
            raise CompressError(f"NormalEquations.update: X has {x.shape[1]} rows but Y has {y.shape[1]}")
        xt = x.transpose(1, 2)
        self.xtx += xt @ x
        self.xty += xt @ y
        self.x_sum += x.sum(1)
        self.y_sum += y.sum(1)
        self.y_sq += (y * y).sum(1)
        self.count += x.shape[1]

    def _centred(self, bias: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(A (S, D, D), B (S, D, O), x̄ (S, D), ȳ (S, O))``: Gram and cross terms, centred with a bias."""
        if not bias:
            return self.xtx, self.xty, torch.zeros_like(self.x_sum), torch.zeros_like(self.y_sum)
        n = max(self.count, 1)
        mx, my = self.x_sum / n, self.y_sum / n
        a = self.xtx - n * mx.unsqueeze(2) * mx.unsqueeze(1)
        b = self.xty - n * mx.unsqueeze(2) * my.unsqueeze(1)
        return a, b, mx, my

    def solve(self, *, ridge: float = 1e-4, bias: bool = True, prior: torch.Tensor | None = None,
              max_condition: float = 1e12) -> Solution:
        """Ridge least squares ``min ||X Wᵀ + b - Y||² + λ ||W - prior||²`` with ``λ = ridge · mean(diag(A))``.

        Args:
            ridge: regularisation relative to the mean diagonal of the (centred) Gram matrix ``A``, >= 0.
            bias: fit an intercept ``b`` (centred system; the intercept is not regularised).
            prior: ``(O, D)`` (``(S, O, D)``) weight the ridge pulls towards; ``None``: zero.
            max_condition: a condition estimate above this is reported as ill-conditioned.

        Returns:
            A :class:`Solution`; ``weight (O, D)`` and ``bias (O,)`` (leading ``S`` with systems).
        """
        if ridge < 0:
            raise CompressError(f"NormalEquations.solve: ridge must be >= 0, got {ridge!r}")
        if self.count == 0:
            return Solution(None, None, "no rows were accumulated", float("inf"))
        if self.count < self.in_features + bias:
            return Solution(None, None, f"underdetermined: {self.count} rows for {self.in_features + bias} unknowns "
                                        "per output (give more calibration data)", float("inf"))
        a, rhs, mx, my = self._centred(bias)
        if not (torch.isfinite(a).all() and torch.isfinite(rhs).all() and torch.isfinite(self.y_sq).all()):
            return Solution(None, None, "inputs or targets hold NaN or infinite values", float("inf"))
        scale = a.diagonal(dim1=1, dim2=2).mean(1)  # (S,)
        if not bool((scale > 0).all()):
            return Solution(None, None, "the inputs do not vary (zero Gram diagonal)", float("inf"))
        lam = ridge * scale
        eye = torch.eye(self.in_features, dtype=a.dtype, device=a.device)
        a = a + lam[:, None, None] * eye
        if prior is not None and ridge > 0:
            p = prior.to(a).reshape(a.shape[0], self.out_features, self.in_features)
            rhs = rhs + lam[:, None, None] * p.transpose(1, 2)
        chol, info = torch.linalg.cholesky_ex(a)
        if bool((info > 0).any()):
            return Solution(None, None, "Cholesky factorisation failed: the inputs are linearly dependent "
                                        "(raise ridge)", float("inf"))
        diag = chol.diagonal(dim1=1, dim2=2)
        condition = float(((diag.max(1).values / diag.min(1).values) ** 2).max())
        if not condition <= max_condition:
            return Solution(None, None, f"ill-conditioned: condition estimate {condition:.3g} exceeds "
                                        f"{max_condition:.3g} (raise ridge)", condition)
        weight = torch.cholesky_solve(rhs, chol).transpose(1, 2)  # (S, O, D)
        b = my - (weight @ mx.unsqueeze(2)).squeeze(2) if bias else None
        if self.systems is None:
            weight, b = weight[0], None if b is None else b[0]
        return Solution(weight, b, None, condition)

    def squared_error(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``Σ ||W x + b - y||²`` over the accumulated rows, per system: ``(S,)`` (a scalar tensor unbatched).

        Args:
            weight: ``(O, D)`` (``(S, O, D)``).
            bias: ``(O,)`` (``(S, O)``) or ``None`` for zero.
        """
        s = self.xtx.shape[0]
        w = weight.to(self.xtx).reshape(s, self.out_features, self.in_features)
        total = (w @ self.xtx * w).sum((1, 2)) - 2 * (w * self.xty.transpose(1, 2)).sum((1, 2)) + self.y_sq.sum(1)
        if bias is not None:
            b = bias.to(self.xtx).reshape(s, self.out_features)
            wx = (w @ self.x_sum.unsqueeze(2)).squeeze(2)  # (S, O)
            total = total + 2 * (b * wx).sum(1) + self.count * (b * b).sum(1) - 2 * (b * self.y_sum).sum(1)
        total = total.clamp_min(0)
        return total if self.systems else total[0]

    def relative_error(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> float:
        """``sqrt(Σ ||W x + b - y||² / Σ ||y||²)`` over all rows and systems (``inf`` for all-zero targets)."""
        energy = float(self.y_sq.sum())
        error = float(self.squared_error(weight, bias).sum())
        return (error / energy) ** 0.5 if energy > 0 else (0.0 if error == 0 else float("inf"))
