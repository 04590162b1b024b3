"""An in-memory image dataset with the light per-sample work done in ``__getitem__``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["TensorImages", "prepare_images"]


def prepare_images(images: torch.Tensor, *, resize: int | None, mean: tuple[float, ...] | None,
                   std: tuple[float, ...] | None, chunk: int = 4096) -> torch.Tensor:
    """Convert uint8 images to normalised float32 at the target size, in chunks to bound memory.

    Args:
        images: ``(N, C, H, W)`` uint8 (or float in [0, 1]).
        resize: target side (bilinear, antialiased) or ``None``.
        mean / std: per-channel normalisation (length C or 1) or ``None``.

    Returns:
        ``(N, C, S, S)`` float32.
    """
    out = []
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk].float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        if resize is not None and tuple(x.shape[-2:]) != (resize, resize):
            x = F.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False, antialias=True)
        if mean is not None and std is not None:
            m = torch.tensor(mean).view(1, -1, 1, 1)
            s = torch.tensor(std).view(1, -1, 1, 1)
            x = (x - m) / s
        out.append(x.contiguous())
    return torch.cat(out) if out else images.float()


class TensorImages(Dataset):
    """Images held as one float tensor; replicates channels and augments per sample.

    Args:
        images: ``(N, C, H, W)`` float32, already normalised.
        labels: ``(N,)`` int64.
        channels: replicate a 1-channel image to this many channels (``None`` keeps C).
        augment: random crop with zero padding (``pad`` pixels) and horizontal flip.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, channels: int | None = None,
                 augment: bool = False, pad: int = 2) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError("images and labels differ in length")
        self.images = images
        self.labels = labels.long()
        self.channels = channels
        self.augment = augment
        self.pad = pad

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[index]
        if self.augment:
            x = self._augment(x)
        if self.channels and x.shape[0] != self.channels:
            x = x.expand(self.channels, -1, -1)
        return x, self.labels[index]

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        # Uses the global torch RNG so a seeded training loop sees the same augmentations.
        h, w = x.shape[-2:]
        padded = F.pad(x, (self.pad,) * 4)
        i, j = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
        x = padded[:, i:i + h, j:j + w]
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x
