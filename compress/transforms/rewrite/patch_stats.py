"""Input patch statistics of convs on calibration data: per-input-channel second moments of the KxK patches.

A dense conv computes ``y = sum_c W_c p_c`` where ``p_c`` is the ``kh*kw`` patch of input channel ``c`` at an
output position and ``W_c`` the ``(N, kh*kw)`` weight slice. For a replacement ``W'_c`` the expected squared
output error of channel ``c``'s contribution is ``||(W_c - W'_c) L_c||_F**2`` with ``L_c L_c^T = Sigma_c =
E[p_c p_c^T]``: these moments turn a weight-space factorisation into an output-space one (activation-aware SVD).
Moments are uncentred, so a shift of the output mean counts as error too (no BatchNorm is assumed downstream).
"""
from __future__ import annotations

from itertools import islice
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ...data.batches import batch_inputs
from ...measurement.util import model_device
from ...hooks import forward_hooks
from ...modes import evaluating

__all__ = ["PatchMoments", "capture_patch_moments"]

# Patch elements per chunk (64 MiB in float32): large inputs are processed a few samples at a time. Each chunk's
# Gram matrix is computed in the input's dtype and accumulated in float64.
_CHUNK_ELEMENTS = 1 << 24


class PatchMoments:
    """Running mean of ``p_c p_c^T`` over every patch position of every sample, for each input channel ``c``.

    Args:
        conv: a ``groups == 1`` ``nn.Conv2d``; its kernel size, stride, padding and dilation define the patches.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        self.conv = conv
        k2 = conv.kernel_size[0] * conv.kernel_size[1]
        self.total = torch.zeros(conv.in_channels, k2, k2, dtype=torch.float64)
        self.count = 0

    def update(self, x: torch.Tensor) -> None:
        """Add the patches of one input batch ``x (B, M, H, W)``."""
        m, k2 = self.total.shape[:2]
        step = max(1, _CHUNK_ELEMENTS // max(1, m * k2 * x.shape[2] * x.shape[3]))
        for chunk in x.detach().split(step):
            cols = self._patches(chunk)  # (M, K*K, b*L)
            self.total += (cols @ cols.transpose(1, 2)).double().cpu()
            self.count += cols.shape[-1]

    def mean(self) -> torch.Tensor:
        """``(M, kh*kw, kh*kw)`` float64: ``E[p_c p_c^T]`` per input channel (zeros before any update)."""
        return self.total / max(self.count, 1)

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        """``(M, kh*kw, B*H'*W')``: every patch of every channel (strided slices of the padded input; much
        faster than ``F.unfold`` on CPU)."""
        c = self.conv
        (kh, kw), (sh, sw), (dh, dw), (ph, pw) = c.kernel_size, c.stride, c.dilation, c.padding
        xp = nn.functional.pad(x, (pw, pw, ph, ph))
        ho = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
        wo = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
        taps = [xp[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
                for i in range(kh) for j in range(kw)]
        return torch.stack(taps, 1).transpose(0, 2).reshape(x.shape[1], kh * kw, -1)  # tap order = weight order


def capture_patch_moments(model: nn.Module, convs: dict[str, nn.Conv2d], calib: Any, *, max_batches: int | None = None,
                          verbose: bool = False) -> dict[str, torch.Tensor]:
    """Per-input-channel patch moments of each conv in ``convs`` on its real inputs from ``calib``.

    The model runs in eval mode without gradients (BatchNorm statistics untouched); each conv's every call
    contributes.

    Args:
        model: the model containing ``convs``.
        convs: qualified name -> ``nn.Conv2d`` (``groups == 1``).
        calib: a tensor batch ``(B, C, H, W)`` or an iterable of batches (tensors or ``(images, labels)``);
            moved to the model's device, as analysis and drop errors do (a plan's calibration batches come
            straight from the loader).
        max_batches: use at most this many batches of ``calib``.
        verbose: show a progress bar.

    Returns:
        Name -> ``(M, kh*kw, kh*kw)`` float64 (CPU) moments, for convs that ran.
    """
    stats = {name: PatchMoments(conv) for name, conv in convs.items()}
    batches = [calib] if isinstance(calib, torch.Tensor) else calib
    device = model_device(model)
    with forward_hooks((conv, lambda mod, args, out, s=stats[name]: s.update(args[0])) for name, conv in convs.items()), \
            evaluating(model), torch.no_grad():
        for batch in tqdm(islice(batches, max_batches), desc="patch moments", leave=False, disable=not verbose):
            model(batch_inputs(batch, what="patch moments").to(device))
    return {name: s.mean() for name, s in stats.items() if s.count}

