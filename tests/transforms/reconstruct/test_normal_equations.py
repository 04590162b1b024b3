"""NormalEquations: exact recovery of a linear map, streaming equals one batch, ill-conditioning as a reason."""
from __future__ import annotations

import pytest
import torch

from compress.errors import CompressError
from compress.transforms.reconstruct import NormalEquations

TOL = 1e-8  # float64 end to end: recovery is limited by rounding, far below this
# relative_error is read from the accumulated moments (sum y^2 - 2 <Wx + b, y> + ||Wx + b||^2): at an exact fit the
# cancellation leaves ~eps * sum y^2, so its floor is ~sqrt(eps) = 1.5e-8 (measured 1.42e-8 in a CI run); an inexact
# fit is orders above this bound
MOMENT_TOL = 1e-6


def _data(n=400, d=7, o=3, systems=None):
    lead = () if systems is None else (systems,)
    x = torch.randn(*lead, n, d, dtype=torch.float64) * torch.linspace(0.5, 3, d, dtype=torch.float64) + 0.7
    w = torch.randn(*lead, o, d, dtype=torch.float64)
    b = torch.randn(*lead, o, dtype=torch.float64)
    return x, w, b, x @ w.transpose(-1, -2) + b.unsqueeze(-2)


def test_exact_recovery_of_a_known_affine_map():
    x, w, b, y = _data()
    eq = NormalEquations(in_features=7, out_features=3)
    eq.update(x, y)
    sol = eq.solve(ridge=0.0)
    assert sol.ok and sol.weight.shape == (3, 7) and sol.bias.shape == (3,)
    assert torch.allclose(sol.weight, w, atol=TOL, rtol=0) and torch.allclose(sol.bias, b, atol=TOL, rtol=0)
    assert eq.relative_error(sol.weight, sol.bias) < MOMENT_TOL
    assert eq.relative_error(w, b) < MOMENT_TOL
    assert eq.relative_error(torch.zeros_like(w)) == pytest.approx(1.0, abs=1e-12)


def test_without_bias_fits_a_linear_map():
    x, w, _, _ = _data()
    eq = NormalEquations(in_features=7, out_features=3)
    eq.update(x, x @ w.T)
    sol = eq.solve(ridge=0.0, bias=False)
    assert sol.bias is None and torch.allclose(sol.weight, w, atol=TOL, rtol=0)


def test_streaming_over_five_batches_equals_one_big_batch():
    x, _, _, y = _data(n=500)
    y = y + 0.1 * torch.randn_like(y)  # not exactly representable: the solutions themselves must agree
    one, many = NormalEquations(in_features=7, out_features=3), NormalEquations(in_features=7, out_features=3)
    one.update(x, y)
    sizes = [x.numel() for x in (one.xtx, one.xty)]
    for xs, ys in zip(x.split(100), y.split(100)):
        many.update(xs, ys)
    assert [t.numel() for t in (many.xtx, many.xty)] == sizes  # O(D^2 + D*O), flat in the number of batches
    a, b = one.solve(ridge=1e-3), many.solve(ridge=1e-3)
    assert many.count == one.count == 500
    assert torch.allclose(a.weight, b.weight, atol=1e-10, rtol=0) and torch.allclose(a.bias, b.bias, atol=1e-10, rtol=0)


def test_systems_solve_independently():
    x, w, b, y = _data(systems=4)
    eq = NormalEquations(in_features=7, out_features=3, systems=4)
    eq.update(x, y)
    sol = eq.solve(ridge=0.0)
    assert sol.weight.shape == (4, 3, 7) and torch.allclose(sol.weight, w, atol=TOL, rtol=0)
    assert torch.allclose(sol.bias, b, atol=TOL, rtol=0)
    assert eq.squared_error(w, b).shape == (4,)


def test_ridge_towards_the_prior_keeps_an_exact_prior():
    x, w, b, y = _data(n=20, d=7)
    eq = NormalEquations(in_features=7, out_features=3)
    eq.update(x, y)
    sol = eq.solve(ridge=10.0, prior=w)
    assert torch.allclose(sol.weight, w, atol=TOL, rtol=0)
    shrunk = eq.solve(ridge=10.0)  # towards zero instead: visibly shrunk
    assert shrunk.weight.norm() < 0.9 * w.norm()


def test_ill_conditioned_system_returns_a_reason():
    x, w, _, _ = _data()
    x[:, 3] = x[:, 2] * 2.0  # linearly dependent columns
    eq = NormalEquations(in_features=7, out_features=3)
    eq.update(x, x @ w.T)
    sol = eq.solve(ridge=0.0)
    assert not sol.ok and sol.weight is None and ("Cholesky" in sol.reason or "ill-conditioned" in sol.reason)
    nearly = NormalEquations(in_features=7, out_features=3)
    x[:, 3] += 1e-7 * torch.randn(x.shape[0], dtype=torch.float64)
    nearly.update(x, x @ w.T)
    sol = nearly.solve(ridge=0.0, max_condition=1e8)
    assert not sol.ok and "ill-conditioned" in sol.reason and sol.condition > 1e8
    assert nearly.solve(ridge=1e-3, max_condition=1e8).ok  # the ridge repairs it


def test_degenerate_systems_return_reasons():
    eq = NormalEquations(in_features=2, out_features=1)
    assert "no rows" in eq.solve().reason
    eq.update(torch.randn(2, 2, dtype=torch.float64), torch.randn(2, 1, dtype=torch.float64))
    assert "underdetermined: 2 rows for 3 unknowns" in eq.solve().reason  # the intercept is one more
    assert eq.solve(ridge=0.0, bias=False).ok
    eq = NormalEquations(in_features=2, out_features=1)
    eq.update(torch.ones(5, 2, dtype=torch.float64), torch.ones(5, 1, dtype=torch.float64))
    assert "do not vary" in eq.solve().reason  # constant inputs: nothing but the intercept
    bad = NormalEquations(in_features=2, out_features=1)
    bad.update(torch.tensor([[float("nan"), 1.0]] * 3), torch.ones(3, 1))
    assert "NaN" in bad.solve().reason


def test_bad_shapes_and_arguments_are_errors():
    with pytest.raises(CompressError, match="in_features"):
        NormalEquations(in_features=0, out_features=1)
    eq = NormalEquations(in_features=3, out_features=2)
    with pytest.raises(CompressError, match="X must have shape"):
        eq.update(torch.zeros(4, 2), torch.zeros(4, 2))
    with pytest.raises(CompressError, match="rows"):
        eq.update(torch.zeros(4, 3), torch.zeros(5, 2))
    with pytest.raises(CompressError, match="ridge"):
        eq.solve(ridge=-1.0)
