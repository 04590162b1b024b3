"""Dense KxK conv -> depthwise KxK (channel multiplier T) + pointwise 1x1, by per-input-channel SVD.

Network decoupling (Guo et al., 2018): the dense conv is ``y = sum_c W[:, c] * x_c``. For each input channel
``c`` the slice ``W[:, c]`` reshaped to ``(N, K*K)`` has an SVD ``U S V^T``; keeping its top ``T`` terms gives
``T`` depthwise kernels ``sqrt(s_t) v_t`` (reshaped ``K x K``) applied to ``x_c`` and pointwise weights
``sqrt(s_t) u_t`` mixing them into the ``N`` outputs. This is the best rank-``T`` approximation of every slice, so
the relative weight error is ``sqrt(sum of dropped s**2) / ||W||``; ``T = K*K`` (or ``T >= min(N, K*K)``) is
exact.

Data-aware (activation-aware, as ASVD / SVD-LLM do for linear layers): given the per-channel input patch moments
``Sigma_c = E[p_c p_c^T] = L_c L_c^T`` (:mod:`compress.transforms.rewrite.patch_stats`), channel ``c``'s expected squared
output error is ``||(W_c - W'_c) L_c||**2``. Its best rank-``T`` minimiser projects ``W_c`` onto the top ``T`` left
singular vectors ``U_T`` of ``W_c L_c``: ``W'_c = U_T U_T^T W_c`` (no inverse of ``L_c`` needed), and the dropped
singular values of ``W_c L_c`` give the relative output error (channels taken as uncorrelated). A small ridge
keeps ``L_c`` invertible, so ``T = min(N, K*K)`` stays exact.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from ....config import check
from ....errors import CompressError
from ..allocate import Option
from ..decompose import smallest_rank, svd_factors, tail_errors
from ..registry import KindOptions, RewriteConfig, apply_config, conv_problem, register_handler

__all__ = ["SeparableConfig", "SeparableOptions", "to_separable", "separable_errors", "separable_effective_weight", "separable_macs",
           "separable_weights"]

# Ridge added to every Sigma_c, relative to the layer's mean patch energy: keeps L_c invertible (exactness at full
# T, channels that never fire fall back to the weight SVD) without visibly changing the data-aware solution.
RIDGE = 1e-6


@dataclasses.dataclass(frozen=True)
class SeparableOptions(KindOptions):
    """Options of the separable rewrite (give at most one; none: ``T = 1``).

    Attributes:
        T: depthwise channel multiplier, an integer >= 1.
        max_error: per-layer relative error budget in ``[0, 1)`` choosing the smallest T (the expected output
            error with calibration data, the weight error without).
        macs_target: the whole model's MACs after the rewrite as a fraction of before, in ``(0, 1]``; T is
            allocated across layers at the least summed squared relative error.
    """

    T: int | None = None
    max_error: float | None = None
    macs_target: float | None = None

    def validate(self) -> None:
        self.exclusive("T", "max_error", "macs_target")
        check(self.T is None or (isinstance(self.T, int) and self.T >= 1), "T", "an integer >= 1", self.T)
        check(self.max_error is None or 0.0 <= self.max_error < 1.0, "max_error", "a number in [0, 1)",
              self.max_error)
        check(self.macs_target is None or (isinstance(self.macs_target, (int, float))
                                           and not isinstance(self.macs_target, bool)
                                           and 0.0 < self.macs_target <= 1.0),
              "macs_target", "a fraction of the model's MACs in (0, 1]", self.macs_target)


@dataclasses.dataclass(frozen=True)
class SeparableConfig(RewriteConfig):
    """A depthwise-separable rewrite of one conv.

    Attributes:
        T: depthwise channel multiplier, ``1 <= T <= kh*kw``.
        moments: per-input-channel patch moments ``(M, kh*kw, kh*kw)`` of the conv's input (see
            :mod:`compress.transforms.rewrite.patch_stats`); given, the factorisation minimises the expected output error
            instead of the weight error. ``None``: data-free.
    """

    kind = "separable"
    Options = SeparableOptions
    planner_values = (1, 2, 4)
    example_options = {"T": 2}
    reads_inputs = True

    T: int = 1
    moments: torch.Tensor | None = dataclasses.field(default=None, compare=False, repr=False)

    def validate(self) -> None:
        check(isinstance(self.T, int) and self.T >= 1, "T", "an integer >= 1", self.T)
        check(self.moments is None or (isinstance(self.moments, torch.Tensor) and self.moments.dim() == 3
                                       and self.moments.shape[1] == self.moments.shape[2]),
              "moments", "None or a (M, K*K, K*K) tensor", type(self.moments).__name__)

    @classmethod
    def eligibility(cls, conv: nn.Conv2d) -> str | None:
        reason = conv_problem(conv, dense=True)
        if reason is None and conv.kernel_size == (1, 1):
            reason = "1x1 kernel (a depthwise 1x1 only scales channels)"
        return reason

    def check_layer(self, conv: nn.Conv2d) -> None:
        super().check_layer(conv)
        k2 = conv.kernel_size[0] * conv.kernel_size[1]
        if self.T > k2:
            raise CompressError(f"separable rewrite: T={self.T} exceeds the kernel's {k2} taps")
        if self.moments is not None and tuple(self.moments.shape) != (conv.in_channels, k2, k2):
            raise CompressError(f"separable rewrite: moments of shape {tuple(self.moments.shape)} do not fit a "
                                f"conv with {conv.in_channels} input channels and {k2} taps")

    @classmethod
    def plan(cls, conv: nn.Conv2d, *, name: str = "", analysis: Any = None, T: int | None = None,
             max_error: float | None = None, moments: torch.Tensor | None = None) -> "SeparableConfig":
        """``T`` as given, or the smallest ``T`` whose relative error is at most ``max_error`` (output error
        with ``moments``, weight error without). ``macs_target`` is resolved by the model-level applier."""
        cls.check_options(T=T, max_error=max_error)
        if max_error is not None:
            T = smallest_rank(separable_errors(conv, moments=moments), max_error)
        return cls(T=1 if T is None else T, moments=moments)

    @classmethod
    def budget_options(cls, conv: nn.Conv2d, *, positions: int, moments: torch.Tensor | None = None) -> list[Option]:
        """The choices a MACs-budget allocation has for ``conv`` at ``positions`` output positions: every ``T``
        cheaper than the dense conv (``value={"T": T}``, ``error`` the squared relative output error with
        ``moments``, weight error without) and the dense conv itself (``value=None``, no error)."""
        errors = separable_errors(conv, moments=moments)
        dense = positions * conv.kernel_size[0] * conv.kernel_size[1] * conv.in_channels * conv.out_channels
        options = [Option(separable_macs(conv, t, positions), float(errors[t]) ** 2, {"T": t})
                   for t in range(1, errors.numel())]
        return [o for o in options if o.macs < dense] + [Option(dense, 0.0, None)]

    @classmethod
    def form_options(cls, value: int | float, in_channels: int) -> dict[str, Any]:
        return {"T": int(value)}

    @classmethod
    def form_fits(cls, shape: Any, value: int | float) -> bool:
        k2 = shape.kernel[0] * shape.kernel[1]
        return k2 > 1 and value <= k2

    @classmethod
    def form_macs(cls, shape: Any, value: int | float) -> int:
        return _macs(shape.in_channels, shape.out_channels, shape.kernel[0] * shape.kernel[1], int(value),
                     shape.out_positions())

    @classmethod
    def form_params(cls, shape: Any, value: int | float) -> int:
        return (_macs(shape.in_channels, shape.out_channels, shape.kernel[0] * shape.kernel[1], int(value), 1)
                + (shape.out_channels if shape.bias else 0))

    @classmethod
    def form_error2(cls, conv: nn.Conv2d, value: int | float, *, moments: torch.Tensor | None = None) -> float:
        """The squared relative output error on ``moments`` (the weight error without)."""
        return float(separable_errors(conv, moments=moments)[int(value)]) ** 2

    def describe(self, conv: nn.Conv2d) -> dict[str, Any]:
        return {"T": self.T, "data_aware": True} if self.moments is not None else {"T": self.T}

    def effective_weight(self, conv: nn.Conv2d, new: nn.Module) -> torch.Tensor:
        return separable_effective_weight(new)


def _slices(conv: nn.Conv2d) -> torch.Tensor:
    """``(M, N, kh*kw)``: the dense weight split by input channel."""
    w = conv.weight.detach()
    return w.permute(1, 0, 2, 3).reshape(w.shape[1], w.shape[0], -1)


def _whitener(moments: torch.Tensor) -> torch.Tensor:
    """``L_c (M, K*K, K*K)`` with ``L_c L_c^T = Sigma_c + ridge`` (symmetric square root; PSD-safe via eigh)."""
    sigma = moments.double()
    scale = float(sigma.diagonal(dim1=-2, dim2=-1).mean())
    ridge = RIDGE * scale if scale > 0 else 1.0  # no signal at all: plain weight SVD
    evals, evecs = torch.linalg.eigh(sigma)
    return evecs * (evals.clamp_min(0) + ridge).sqrt().unsqueeze(-2)


def separable_errors(conv: nn.Conv2d, *, moments: torch.Tensor | None = None) -> torch.Tensor:
    """Relative error for every multiplier: ``(kh*kw + 1,)`` float64, entry ``T`` for multiplier ``T``.

    Without ``moments`` the weight error ``||W' - W|| / ||W||``; with the per-channel patch moments ``(M, K*K,
    K*K)`` the relative expected output error ``sqrt(sum_c ||(W_c - W'_c) L_c||**2 / sum_c ||W_c L_c||**2)``.
    """
    a = _slices(conv).double()  # (M, N, K*K)
    if moments is not None:
        a = a @ _whitener(moments).to(a.device)
    s = torch.linalg.svdvals(a)  # (M, min(N, K*K))
    k2 = conv.kernel_size[0] * conv.kernel_size[1]
    errors = tail_errors(s)
    return torch.cat([errors, errors.new_zeros(k2 + 1 - errors.numel())])  # T beyond the rank: exact


def separable_macs(conv: nn.Conv2d, T: int, positions: int) -> int:
    """Per-sample MACs of the rewrite of ``conv`` with multiplier ``T`` at ``positions = H'*W'`` output positions:
    depthwise ``H'W'·K²·M·T`` + pointwise ``H'W'·M·T·N`` (bias adds, unchanged by the rewrite, not counted)."""
    return _macs(conv.in_channels, conv.out_channels, conv.kernel_size[0] * conv.kernel_size[1], T, positions)


def _macs(in_channels: int, out_channels: int, taps: int, T: int, positions: int) -> int:
    """``positions·M·T·(K² + N)``: depthwise plus pointwise multiply-accumulates (weights at ``positions=1``)."""
    return positions * in_channels * T * (taps + out_channels)


def separable_weights(conv: nn.Conv2d, T: int, *,
                      moments: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pointwise and depthwise factors of every input-channel slice: ``left (M, N, T)``, ``right (M, T, K*K)``
    (float64, singular values split evenly), ``left @ right`` the rank-``T`` approximation of ``W_c``.

    Without ``moments`` the best one in weight space; with them the one of least expected output error.
    """
    w = _slices(conv).double()  # (M, N, K*K)
    if moments is not None:
        u = torch.linalg.svd(w @ _whitener(moments).to(w.device), full_matrices=False)[0][..., :T]  # (M, N, T')
        w = u @ (u.transpose(-1, -2) @ w)  # rank <= T: the balanced SVD below factorises it exactly
    return svd_factors(w, T)


def to_separable(conv: nn.Conv2d, T: int, *, moments: torch.Tensor | None = None) -> nn.Module:
    """Replace a dense KxK conv by depthwise KxK (multiplier ``T``) + pointwise 1x1, initialised by SVD.

    Args:
        conv: dense ``nn.Conv2d(M, N, (kh, kw))`` with ``groups == 1``.
        T: channel multiplier, ``1..kh*kw``; ``kh*kw`` is exact.
        moments: optional per-input-channel patch moments ``(M, kh*kw, kh*kw)`` of the conv's input
            (:func:`compress.transforms.rewrite.patch_stats.capture_patch_moments`): the factors then minimise the
            expected output error on that data instead of the weight error; ``kh*kw`` stays exact.

    Returns:
        ``nn.Sequential`` with ``depthwise`` = ``Conv2d(M, M*T, (kh, kw), groups=M)`` (conv's stride, padding,
        dilation; no bias) and ``pointwise`` = ``Conv2d(M*T, N, 1)`` carrying the bias. Input ``(B, M, H, W)``
        -> output ``(B, N, H', W')`` like ``conv``.
    """
    return apply_config(conv, SeparableConfig(T=T, moments=moments))


@register_handler(SeparableConfig)
def _separable(conv: nn.Conv2d, config: SeparableConfig) -> nn.Module:
    t = config.T
    m, n = conv.in_channels, conv.out_channels
    left, right = separable_weights(conv, t, moments=config.moments)  # (M, N, T), (M, T, K*K)
    kw = dict(device=conv.weight.device, dtype=conv.weight.dtype)
    depthwise = nn.Conv2d(m, m * t, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                          dilation=conv.dilation, groups=m, bias=False, **kw)
    pointwise = nn.Conv2d(m * t, n, 1, bias=conv.bias is not None, **kw)
    with torch.no_grad():
        # depthwise output channel c*T + t reads input channel c (groups=M) and holds term t of slice c
        depthwise.weight.copy_(right.reshape(m * t, 1, *conv.kernel_size))
        pointwise.weight.copy_(left.permute(1, 0, 2).reshape(n, m * t, 1, 1))
        if conv.bias is not None:
            pointwise.bias.copy_(conv.bias.detach())
    return nn.Sequential(OrderedDict([("depthwise", depthwise), ("pointwise", pointwise)]))


def separable_effective_weight(module: nn.Sequential) -> torch.Tensor:
    """The dense weight ``(N, M, kh, kw)`` computed by a :func:`to_separable` result."""
    dw, pw = module.depthwise, module.pointwise
    m, t = dw.in_channels, dw.out_channels // dw.in_channels
    d = dw.weight.detach().reshape(m, t, -1)  # (M, T, K*K)
    p = pw.weight.detach().reshape(pw.out_channels, m, t)  # (N, M, T)
    return torch.einsum("nmt,mtk->nmk", p, d).reshape(pw.out_channels, m, *dw.kernel_size)
