"""Streaming per-channel statistics of ``(B, C, H, W)`` activations, merged in float64.

Every batch contributes ``n = B*H*W`` samples per channel. Per batch we write one channel-major ``(C, n)``
copy ``X`` of the activation, reduce its rows (min/max, sum of ``|x|``, zero count, mean), centre it in place
and form the cross-product matrix ``M2_b = (X - m_b)(X - m_b)^T`` with a single matmul; batches are
merged with Chan et al.'s parallel update (``M2 = M2_a + M2_b + δδ^T n_a n_b / n``). All running state is
float64; nothing of the activation is kept.

Why the centred per-batch products may be float32: converting a float32 activation to float64 doubles the
bytes every pass reads and float64 matmuls are 2x (CPU) to 30x (consumer GPU) slower, while the cross
product is the dominant cost. So each batch is reduced in the activation's own precision (float32 sums are
pairwise/cascade sums, ~1e-7 relative) and only the per-batch results are added into float64 state. ``M2_b``
is formed *after subtracting the batch mean*, so float32 only has to resolve the spread, not the mean:
relative error ~1e-6 on the covariance, far below what grouping decisions need, and the cross-batch merge
is float64. A float64 model gets float64 arithmetic throughout (the streaming-equals-batch test uses one).

Memory: ``O(C^2)`` per layer (``O(C)`` above ``max_channels_for_correlation``, where only the variance is kept).
"""
from __future__ import annotations

import torch

__all__ = ["ChannelAccumulator"]

_F64 = torch.float64


class ChannelAccumulator:
    """Running float64 statistics for one layer's ``C`` channels.

    Args:
        channels: ``C``.
        device: where the running sums live (the activations' device, so no transfer per batch).
        full_covariance: keep the ``(C, C)`` matrix; if ``False`` keep only its diagonal ``(C,)``.
        nonnegative: the values are known to be ``>= 0`` (ReLU/ReLU6 outputs): ``|x| = x``, so one row sum
            gives both the mean and the mean of ``|x|`` (two fewer passes over the activation).
    """

    def __init__(self, channels: int, *, device: torch.device, full_covariance: bool = True,
                 nonnegative: bool = False) -> None:
        self.channels = channels
        self.full_covariance = full_covariance
        self.nonnegative = nonnegative
        self.n = 0
        zeros = lambda: torch.zeros(channels, dtype=_F64, device=device)  # noqa: E731
        self.mean, self.abs_sum, self.zeros = zeros(), zeros(), zeros()
        self.min = torch.full((channels,), float("inf"), dtype=_F64, device=device)
        self.max = torch.full((channels,), float("-inf"), dtype=_F64, device=device)
        shape = (channels, channels) if full_covariance else (channels,)
        self.m2 = torch.zeros(shape, dtype=_F64, device=device)

    def update(self, y: torch.Tensor) -> None:
        """Add one activation ``y`` of shape ``(B, C, H, W)`` (or ``(C, H, W)``); ``y`` is not modified."""
        x = self._channel_major(y)
        if x is None:
            return
        n = x.shape[1]
        mean_b = self._reduce_rows(x)
        x.sub_(mean_b[:, None])
        if self.full_covariance:
            m2_b = x @ x.T  # added into the float64 state by a mixed-dtype add_: no float64 temporary
        else:
            m2_b = torch.linalg.vector_norm(x, 2, dim=1).to(_F64).square()
        self._merge(n, mean_b.to(_F64), m2_b)

    def _channel_major(self, y: torch.Tensor) -> torch.Tensor | None:
        """A fresh ``(C, n)`` copy of ``y`` in float32 (float64 for float64 input); ``None`` when empty.

        One pass writes it (half/bfloat16 are upcast on the way); every reduction then runs over contiguous
        rows, and the copy can be centred in place without touching the model's tensor.
        """
        y = y.detach()
        if y.dim() == 3:
            y = y.unsqueeze(0)
        if y.dim() != 4 or y.shape[1] != self.channels:
            raise RuntimeError(f"expected a (B, {self.channels}, H, W) activation, got {tuple(y.shape)}")
        n = y.numel() // self.channels
        if n == 0:
            return None
        work = _F64 if y.dtype == _F64 else torch.float32
        x = torch.empty((self.channels, y.shape[0]) + tuple(y.shape[2:]), dtype=work, device=y.device)
        return x.copy_(y.transpose(0, 1)).view(self.channels, n)

    def _reduce_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Fold min, max, zero count and sum of ``|x|`` of ``x`` ``(C, n)`` into the state; return the row means.

        amin/amax, abs().sum() and (x == 0).sum() measured 5-100x faster than aminmax, vector_norm(ord=1) and
        count_nonzero on (C, n) CPU rows (torch 2.14); the zero count is exact (int64) for any n.
        """
        self.min = torch.minimum(self.min, x.amin(1).to(_F64))
        self.max = torch.maximum(self.max, x.amax(1).to(_F64))
        self.zeros += (x == 0).sum(1).to(_F64)
        if self.nonnegative:
            row_sum = x.sum(1)
            self.abs_sum += row_sum.to(_F64)
            return row_sum / x.shape[1]
        self.abs_sum += x.abs().sum(1).to(_F64)
        return x.mean(1)

    def _merge(self, n_b: int, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        """Chan et al.'s merge of ``(n_b, mean_b, m2_b)`` into the running state (in place, no C^2 temporaries).

        ``m2_b`` may be float32; it is upcast element by element while being added.
        """
        n_a, n = self.n, self.n + n_b
        delta = mean_b - self.mean
        self.mean.add_(delta, alpha=n_b / n)
        self.m2.add_(m2_b)
        self._add_outer(delta, n_a * n_b / n)
        self.n = n

    def _add_outer(self, delta: torch.Tensor, weight: float) -> None:
        """``m2 += weight * delta delta^T`` (or its diagonal)."""
        if self.full_covariance:
            self.m2.addr_(delta, delta, alpha=weight)
        else:
            self.m2.add_(delta.square(), alpha=weight)

    def all_reduce(self) -> None:
        """Combine the state of all ``torch.distributed`` ranks so every rank holds the global statistics.

        Uses only SUM/MIN/MAX all-reduces: counts and sums are summed, then each rank re-centres its ``M2``
        on the global mean (exact, no cancellation) before the ``M2`` are summed.
        """
        import torch.distributed as dist

        n = torch.tensor([float(self.n)], dtype=_F64, device=self.mean.device)
        dist.all_reduce(n, op=dist.ReduceOp.SUM)
        total = self.mean * self.n
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        n_all = int(n.item())
        mean_all = total / max(n_all, 1)
        self._add_outer(self.mean - mean_all, float(self.n))
        for tensor, op in ((self.m2, dist.ReduceOp.SUM), (self.abs_sum, dist.ReduceOp.SUM),
                           (self.zeros, dist.ReduceOp.SUM), (self.min, dist.ReduceOp.MIN),
                           (self.max, dist.ReduceOp.MAX)):
            dist.all_reduce(tensor, op=op)
        self.n, self.mean = n_all, mean_all

    def result(self) -> dict[str, torch.Tensor]:
        """Per-channel statistics on the CPU, float64: ``mean, var, min, max, mean_abs, apoz`` (each ``(C,)``)
        and ``cov`` (``(C, C)`` population covariance, absent without the full matrix)."""
        n = max(self.n, 1)
        var = (self.m2.diagonal() if self.full_covariance else self.m2) / n
        vectors = {"mean": self.mean, "var": var.clamp_min(0.0), "min": self.min, "max": self.max,
                   "mean_abs": self.abs_sum / n, "apoz": self.zeros / n}
        # one device-to-host transfer for all vectors (each small transfer costs a sync on CUDA)
        host = torch.stack(list(vectors.values())).to("cpu", _F64)
        out = dict(zip(vectors, host.unbind(0)))
        if self.full_covariance:
            out["cov"] = (self.m2 / n).to("cpu", _F64)
        return out
