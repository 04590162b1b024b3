"""BatchNorm re-calibration: re-estimate running statistics after pruning or rewriting changed the activations.

Uses a cumulative average (``momentum=None``) over the calibration batches, so the result does not depend on a
momentum schedule and equals the mean of per-batch statistics. Only BatchNorm layers run in training mode:
dropout and other train-time behaviour stay off, so the statistics match what the model sees at inference.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..errors import CompressError
from ..measurement.util import model_device
from ..modes import evaluating
from .distributed import unwrap

__all__ = ["calibrate_bn"]


@torch.no_grad()
def calibrate_bn(model: nn.Module, loader: DataLoader, *, max_batches: int = 32,
                 device: torch.device | str | None = None, verbose: bool = False) -> int:
    """Reset and re-estimate the running mean/var of every BatchNorm layer of ``model`` in place.

    Args:
        model: the network (a DDP wrapper is unwrapped); its train/eval flags are restored afterwards.
        loader: yields ``(images (B, C, H, W), labels)``; labels are ignored.
        max_batches: number of batches to average over (the loader's first ``max_batches``).
        device: where to run; default: the device of the model's first parameter.
        verbose: show a progress bar.

    Returns:
        The number of BatchNorm layers re-estimated (0: nothing to do, the loader is not read).
    """
    model = unwrap(model)
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if max_batches < 1:
        raise CompressError(f"calibrate: max_batches must be >= 1, got {max_batches}")
    if not norms:
        return 0
    if device is None:
        device = model_device(model)
    momenta = {m: m.momentum for m in norms}
    with evaluating(model):
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the calibration batches
            m.train()
        try:
            for images, *_ in tqdm(itertools.islice(loader, max_batches), total=min(max_batches, len(loader)),
                                   desc="calibrate BN", leave=False, disable=not verbose):
                model(images.to(device, non_blocking=True))
        finally:
            for m, momentum in momenta.items():
                m.momentum = momentum
    return len(norms)
