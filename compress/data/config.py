"""The recipe's ``data:`` section."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import Config, check

__all__ = ["DataConfig", "SOURCES", "MAX_SYNTHETIC_GIB"]

SOURCES = ("fashion-mnist", "imagefolder", "cifar10", "synthetic")
MAX_SYNTHETIC_GIB = 8


@dataclass(frozen=True)
class DataConfig(Config):
    """Where the images come from and how they are prepared.

    Attributes:
        source: one of ``fashion-mnist``, ``imagefolder``, ``cifar10``, ``synthetic``, or a user factory
            ``package.module:function`` returning the splits (see :mod:`compress.data.factory`).
        kwargs: keyword arguments of a user factory (only with a factory ``source``).
        root: data directory (fashion-mnist: the IDX files; imagefolder: has ``train/`` and ``val/`` or
            ``test/``; cifar10: torchvision's ``cifar-10-batches-py`` parent). Default for fashion-mnist:
            ``$COMPRESS_DATA`` then ``/usr/share/datasets/fashion-mnist``.
        resize: square side to resize to (``None`` keeps the native size).
        channels: replicate grey images to 3 channels (``3``) or keep them (``None``/``1``).
        normalize: standardise with the dataset's mean/std.
        mean / std: per-channel statistics to standardise with instead of the source's (one value per channel
            the images have after ``channels``, or one for all); both or neither. The source's defaults:
            Fashion-MNIST's and CIFAR-10's own, ImageNet's for 3-channel image folders, 0.5 / 0.5 for grey ones.
        augment: random crop (pad 2 / 4) and horizontal flip on the training split.
        batch_size / eval_batch_size: loader batch sizes.
        train_subset / test_subset: use only the first N images (smoke runs); ``None`` = all.
        val_size: images held out of the training split for early stopping / validation.
        calib_size: training images (from the held-in part) used for analysis and BN calibration.
        image_size / num_classes / synthetic_size: shape of the ``synthetic`` source.
        workers: DataLoader worker processes.
    """

    source: str = "fashion-mnist"
    kwargs: dict[str, Any] = field(default_factory=dict)
    root: str | None = None
    resize: int | None = None
    channels: int | None = None
    normalize: bool = True
    mean: list[float] | None = None
    std: list[float] | None = None
    augment: bool = False
    batch_size: int = 128
    eval_batch_size: int = 512
    train_subset: int | None = None
    test_subset: int | None = None
    val_size: int = 5000
    calib_size: int = 1024
    image_size: int = 32
    num_classes: int = 10
    synthetic_size: int = 512
    workers: int = 0

    def validate(self) -> None:
        from .factory import is_factory

        check(self.source in SOURCES or is_factory(self.source), "source",
              "one of " + ", ".join(repr(s) for s in SOURCES) + " or a factory 'package.module:function'", self.source)
        check(not self.kwargs or is_factory(self.source), "kwargs", "empty unless source is a factory",
              self.kwargs)
        check((self.mean is None) == (self.std is None), "mean", "given together with std (both or neither)",
              self.mean)
        for name in ("mean", "std"):
            value = getattr(self, name)
            check(value is None or len(value) in (1, 3), name, "a list of 1 or 3 numbers, or null", value)
        check(self.std is None or all(v > 0 for v in self.std), "std", "positive numbers", self.std)
        check(self.mean is None or len(self.mean) == len(self.std), "std", "as many values as mean", self.std)
        grey = self.source == "fashion-mnist" or self.channels == 1  # standardised before any replication
        check(self.mean is None or not grey or len(self.mean) == 1, "mean",
              "one value (the images are grey when standardised)", self.mean)
        check(self.resize is None or 8 <= self.resize <= 1024, "resize", "an integer in 8..1024 or null", self.resize)
        check(self.channels in (None, 1, 3), "channels", "1, 3 or null", self.channels)
        check(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        check(self.eval_batch_size >= 1, "eval_batch_size", "an integer >= 1", self.eval_batch_size)
        for name in ("train_subset", "test_subset"):
            value = getattr(self, name)
            check(value is None or value >= 1, name, "an integer >= 1 or null", value)
        check(self.val_size >= 0, "val_size", "an integer >= 0", self.val_size)
        check(self.calib_size >= 1, "calib_size", "an integer >= 1", self.calib_size)
        check(4 <= self.image_size <= 1024, "image_size", "an integer in 4..1024", self.image_size)
        check(self.num_classes >= 2, "num_classes", "an integer >= 2", self.num_classes)
        check(self.synthetic_size >= 2, "synthetic_size", "an integer >= 2", self.synthetic_size)
        check(self.workers >= 0, "workers", "an integer >= 0", self.workers)
        if self.source == "synthetic":
            self._check_synthetic_memory()

    def _check_synthetic_memory(self) -> None:
        # synthetic images are generated in memory (float32) before anything runs: refuse sizes that cannot fit
        side = self.resize or self.image_size
        images = (self.train_subset or self.synthetic_size) + (self.test_subset or max(self.synthetic_size // 4, 2))
        gib = images * (self.channels or 3) * side * side * 4 / 2**30
        check(gib <= MAX_SYNTHETIC_GIB, "synthetic_size",
              f"at most {MAX_SYNTHETIC_GIB} GiB of float32 images (this size and image_size need {gib:.3g} GiB)",
              self.synthetic_size)
