"""Data: named sources split into train / val / test / calib loaders.

``val`` is held out of the training split (early stopping, never the test set); ``calib`` is a fixed draw from
the held-in training images without augmentation (analysis, BatchNorm re-calibration, Taylor importance). Both,
and the ``train_subset`` / ``test_subset`` of every source, are seeded stratified draws
(:mod:`compress.data.split`): each holds every class in proportion, and ``run.json`` records the counts. The
training split is in class-major order before the seeded shuffle, so the same images stored class by class (an
image folder) or interleaved (IDX files) train on the same batches; calibration batches are a seeded mix of every
class (batches of one class would give BatchNorm re-calibration each class' variance instead of the data's).
"""
from __future__ import annotations

import copy

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .checks import check_labels, check_nonempty
from .config import SOURCES, DataConfig
from .factory import UserData, is_factory, load_factory
from .idx import read_idx
from .sources import load_source, preprocessing
from .split import SPLIT_VERSION, class_counts, class_major, dataset_labels, mixed, stratified_sample, stratified_split

__all__ = ["DataBundle", "DataConfig", "build_data", "read_idx", "SOURCES"]


@dataclass
class DataBundle:
    """The loaders a run uses, and facts about them.

    Attributes:
        train / val / test / calib: DataLoaders yielding ``(images (B, C, H, W) float32, labels (B,) int64)``;
            ``val`` may be ``None`` when ``val_size`` is 0.
        num_classes: number of classes.
        input_shape: ``(C, H, W)`` of one image.
        source: the recipe's source name; ``synthetic`` is True for random data (reports say so).
        sizes: number of images per split.
        splits: how the splits were drawn (``method``, ``version``, ``seed``) and the images per class in each.
        preprocessing: how images are prepared for the model (see :func:`compress.data.sources.preprocessing`;
            for a factory's or in-memory data only the input shape is known).
    """

    train: DataLoader
    val: DataLoader | None
    test: DataLoader
    calib: DataLoader
    num_classes: int
    input_shape: tuple[int, int, int]
    source: str
    synthetic: bool
    sizes: dict[str, int]
    splits: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary for reports and ``run.json``."""
        return {"source": self.source, "synthetic": self.synthetic, "num_classes": self.num_classes,
                "input_shape": list(self.input_shape), "sizes": dict(self.sizes), "splits": dict(self.splits)}


def build_data(cfg: DataConfig, *, seed: int = 0, splits: Mapping[str, Any] | None = None) -> DataBundle:
    """Load ``cfg.source`` (a built-in source or a user factory) and build the four loaders.

    Args:
        cfg: the recipe's data section (with ``splits``, only its loader options are used).
        seed: seeds the stratified splits and the training loader's shuffling generator (the training loop
            re-seeds it per epoch).
        splits: in-memory data instead of ``cfg.source``: what a data factory returns (``train`` and ``test``
            datasets or loaders; ``val``, ``calib``, ``num_classes`` optional; see :mod:`compress.data.factory`).

    Raises:
        CompressError: data missing, empty or inconsistent.
    """
    if splits is not None:
        user = UserData.checked("in-memory data", splits)
    else:
        user = load_factory(cfg.source, cfg.kwargs) if is_factory(cfg.source) else None
    if user is None:
        train_full, test, num_classes = load_source(cfg, seed=seed)
    else:
        train_full, test, num_classes = user.dataset("train"), user.dataset("test"), user.num_classes()
    given_val = user.dataset("val") if user is not None else None
    for dataset, what in ((train_full, "train"), (test, "test"), (given_val, "val")):
        if dataset is not None:
            check_nonempty(dataset, what)
            check_labels(dataset, num_classes, what, source=cfg.source)
    n = len(train_full)
    labels = dataset_labels(train_full)
    if given_val is not None:
        held_in, held_out, val_size = list(range(n)), [], len(given_val)
        val = given_val
    else:
        val_size = min(cfg.val_size, n // 5) if n > 1 else 0
        held_in, held_out = stratified_split(labels, val_size, seed=seed + 1)
        val = Subset(_without_augmentation(train_full), held_out) if val_size else None
    # class-major: the seeded shuffle then draws the same batches whether the files are stored by class or not
    held_in = class_major(held_in, labels)
    train = Subset(train_full, held_in)
    given_calib = user.dataset("calib") if user is not None else None
    if given_calib is not None:
        calib, calib_positions = given_calib, None
    else:
        picked = stratified_sample(labels[torch.as_tensor(held_in, dtype=torch.long)],
                                   min(cfg.calib_size, len(held_in)), seed=seed + 2)
        calib_positions = mixed([held_in[i] for i in picked], seed=seed + 3)  # batches of every class, not one
        calib = Subset(_without_augmentation(train_full), calib_positions)
    calib_n = len(calib)
    counts = {"train": class_counts(labels, held_in, num_classes=num_classes),
              "val": (class_counts(labels, held_out, num_classes=num_classes) if given_val is None else
                      class_counts(dataset_labels(given_val), num_classes=num_classes)),
              "calib": class_counts(labels if calib_positions is not None else dataset_labels(calib),
                                    calib_positions, num_classes=num_classes),
              "test": class_counts(dataset_labels(test), num_classes=num_classes)}
    x0, _ = test[0]
    loader_args = {"num_workers": cfg.workers, "persistent_workers": cfg.workers > 0}

    def loader(split: str, make: Callable[[], DataLoader | None]) -> DataLoader | None:
        """The factory's own loader for ``split`` when it gave one, else ``make()``."""
        own = user.loader(split) if user is not None else None
        return own if own is not None else make()

    def eval_loader(ds: Dataset | None) -> DataLoader | None:
        return DataLoader(ds, batch_size=cfg.eval_batch_size, shuffle=False, **loader_args) if ds is not None else None

    return DataBundle(
        train=loader("train", lambda: DataLoader(
            train, batch_size=cfg.batch_size, shuffle=True, drop_last=len(train) > cfg.batch_size,
            generator=torch.Generator().manual_seed(seed), **loader_args)),
        val=loader("val", lambda: eval_loader(val)),
        test=loader("test", lambda: eval_loader(test)),
        calib=loader("calib", lambda: DataLoader(calib, batch_size=min(cfg.batch_size, calib_n), shuffle=False,
                                                 **loader_args)),
        num_classes=num_classes,
        input_shape=tuple(x0.shape),
        source=user.source if user is not None else cfg.source,
        synthetic=user is None and cfg.source == "synthetic",
        sizes={"train": len(train), "val": val_size, "test": len(test), "calib": calib_n},
        splits={"method": "stratified" if user is None else "factory (val/calib drawn stratified when absent)",
                "version": SPLIT_VERSION, "seed": seed, "class_counts": counts},
        preprocessing=(preprocessing(cfg, tuple(x0.shape)) if user is None else
                       {"source": user.source, "input_shape": list(x0.shape), "layout": "NCHW", "dtype": "float32",
                        "note": "prepared by the user's data code; apply the same transforms when deploying"}),
    )


def _without_augmentation(dataset: Dataset) -> Dataset:
    """A view of ``dataset`` with augmentation off (val/calib must be deterministic), for every source.

    In-memory images get a copy with ``augment=False``; a file-backed dataset (ImageFolder) that carries an
    ``eval_transform`` gets a shallow copy using it; a ``Subset`` is unwrapped and rebuilt on the view.
    """
    from .tensors import TensorImages

    if isinstance(dataset, Subset):
        return Subset(_without_augmentation(dataset.dataset), dataset.indices)
    if isinstance(dataset, TensorImages) and dataset.augment:
        return TensorImages(dataset.images, dataset.labels, channels=dataset.channels, augment=False)
    eval_transform = getattr(dataset, "eval_transform", None)
    if eval_transform is not None and getattr(dataset, "transform", None) is not eval_transform:
        view = copy.copy(dataset)
        view.transform = eval_transform
        if hasattr(view, "transforms"):  # torchvision VisionDataset applies .transforms, built from .transform
            from torchvision.datasets.vision import StandardTransform

            view.transforms = StandardTransform(eval_transform, getattr(view, "target_transform", None))
        return view
    return dataset
