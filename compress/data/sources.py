"""Named data sources. Each returns ``(train, test, num_classes)`` datasets before splitting.

``train_subset`` / ``test_subset`` are seeded stratified draws (:mod:`compress.data.split`), never "the first N"
of files sorted by class.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from ..errors import CompressError
from .config import DataConfig
from .idx import read_idx
from .split import dataset_labels, stratified_sample
from .tensors import TensorImages, prepare_images

__all__ = ["load_source", "preprocessing", "normalization", "DEBIAN_FASHION_MNIST", "FASHION_MNIST_FILES"]

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_FMNIST_STATS = ((0.2860,), (0.3530,))
_CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

Splits = tuple[Dataset, Dataset, int]


def normalization(cfg: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` the images of ``cfg`` are standardised with (``None``: not normalised): the recipe's
    ``mean``/``std`` when given, else the source's statistics (``None`` for synthetic and factory sources)."""
    if not cfg.normalize:
        return None
    if cfg.mean is not None:
        return tuple(map(float, cfg.mean)), tuple(map(float, cfg.std))
    return {"fashion-mnist": _FMNIST_STATS, "cifar10": _CIFAR_STATS,
            "imagefolder": _IMAGENET_STATS if (cfg.channels or 3) == 3 else ((0.5,), (0.5,))}.get(cfg.source)


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def _fashion_root(cfg: DataConfig) -> Path:
    for candidate in (cfg.root, os.environ.get("COMPRESS_DATA"), DEBIAN_FASHION_MNIST):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    tried = ", ".join(str(c) for c in (cfg.root, os.environ.get("COMPRESS_DATA"), DEBIAN_FASHION_MNIST) if c)
    raise CompressError(
        f"data.root: Fashion-MNIST not found (looked in {tried}). Install it with "
        "`apt-get install -y dataset-fashion-mnist` (files land in /usr/share/datasets/fashion-mnist), or put "
        "the four IDX files (train-images-idx3-ubyte.gz, ...) in a directory and set data.root or $COMPRESS_DATA.")


def _subset_positions(labels: torch.Tensor, n: int | None, seed: int) -> torch.Tensor | None:
    """Positions of a seeded stratified subset of ``n`` images (``None``: keep all)."""
    if n is None or n >= labels.numel():
        return None
    return torch.as_tensor(stratified_sample(labels, n, seed=seed), dtype=torch.long)


def _fashion_mnist(cfg: DataConfig, seed: int) -> Splits:
    root = _fashion_root(cfg)
    paths = {}
    for key, stem in FASHION_MNIST_FILES.items():
        path = _find_idx(root, stem)
        if path is None:
            raise CompressError(f"data.root: {root} has no {stem}.gz (expected the four Fashion-MNIST IDX files; "
                                "`apt-get install -y dataset-fashion-mnist` provides them)")
        paths[key] = path
    mean, std = normalization(cfg) or (None, None)

    def split(images_key: str, labels_key: str, subset: int | None, augment: bool) -> TensorImages:
        images = read_idx(paths[images_key])
        labels = read_idx(paths[labels_key])
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise CompressError(f"{paths[images_key]}: expected (N, 28, 28) images matching {paths[labels_key]}")
        keep = _subset_positions(labels, subset, seed)
        if keep is not None:
            images, labels = images[keep], labels[keep]
        x = prepare_images(images.unsqueeze(1), resize=cfg.resize, mean=mean, std=std)
        return TensorImages(x, labels, channels=cfg.channels, augment=augment, pad=2)

    return (split("train_images", "train_labels", cfg.train_subset, cfg.augment),
            split("test_images", "test_labels", cfg.test_subset, False), 10)


def _cifar10(cfg: DataConfig, seed: int) -> Splits:
    from torchvision.datasets import CIFAR10

    root = cfg.root or os.environ.get("COMPRESS_DATA")
    if not root:
        raise CompressError("data.root: expected the directory that holds cifar-10-batches-py, got nothing")
    try:
        train_raw = CIFAR10(root, train=True, download=False)
        test_raw = CIFAR10(root, train=False, download=False)
    except RuntimeError as err:
        raise CompressError(f"data.root: {root}: CIFAR-10 not found or corrupted ({err}); expected torchvision's "
                            "cifar-10-batches-py folder (downloads are disabled)") from None
    mean, std = normalization(cfg) or (None, None)

    def split(raw, subset: int | None, augment: bool) -> TensorImages:
        images = torch.from_numpy(raw.data).permute(0, 3, 1, 2)
        labels = torch.tensor(raw.targets)
        keep = _subset_positions(labels, subset, seed)
        if keep is not None:
            images, labels = images[keep], labels[keep]
        x = prepare_images(images, resize=cfg.resize, mean=mean, std=std)
        return TensorImages(x, labels, channels=cfg.channels, augment=augment, pad=4)

    return split(train_raw, cfg.train_subset, cfg.augment), split(test_raw, cfg.test_subset, False), 10


def _imagefolder(cfg: DataConfig, seed: int) -> Splits:
    from torchvision import datasets, transforms

    if not cfg.root:
        raise CompressError("data.root: expected a directory with train/ and val/ (or test/) class folders, "
                            "got nothing")
    root = Path(cfg.root)
    train_dir = root / "train"
    test_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise CompressError(f"data.root: {root}: expected sub-directories train/ and val/ (or test/), "
                            "each with one folder of images per class")
    size = cfg.resize or cfg.image_size
    channels = cfg.channels or 3
    steps = [transforms.Resize((size, size))]
    if channels == 1:
        steps.append(transforms.Grayscale(1))
    else:
        steps.append(transforms.Lambda(lambda im: im.convert("RGB")))
    steps.append(transforms.ToTensor())
    stats = normalization(cfg)
    if stats is not None:
        steps.append(transforms.Normalize(*stats))
    train_steps = ([transforms.RandomResizedCrop(size, scale=(0.6, 1.0)), transforms.RandomHorizontalFlip()]
                   if cfg.augment else [])
    try:
        train = datasets.ImageFolder(str(train_dir), transform=transforms.Compose(train_steps + steps))
        test = datasets.ImageFolder(str(test_dir), transform=transforms.Compose(steps))
        train.eval_transform = test.transform  # val / calib views read train images without augmentation
    except (FileNotFoundError, RuntimeError) as err:
        raise CompressError(f"data.root: {root}: {err}") from None
    if train.classes != test.classes:
        raise CompressError(f"data.root: {root}: train/ and {test_dir.name}/ have different class folders "
                            f"({train.classes} vs {test.classes})")
    return _subset(train, cfg.train_subset, seed), _subset(test, cfg.test_subset, seed), len(train.classes)


def _subset(dataset: Dataset, n: int | None, seed: int) -> Dataset:
    """A seeded stratified subset of ``n`` images of a file-backed dataset (the dataset itself: all)."""
    keep = _subset_positions(dataset_labels(dataset), n, seed)
    return dataset if keep is None else torch.utils.data.Subset(dataset, keep.tolist())


def _synthetic(cfg: DataConfig, seed: int) -> Splits:
    """Random images with a class-dependent pattern, so a model can learn something (labelled synthetic)."""
    channels = cfg.channels or 3
    size = cfg.resize or cfg.image_size
    g = torch.Generator().manual_seed(seed + 12345)
    patterns = torch.randn(cfg.num_classes, channels, size, size, generator=g)

    def make(n: int) -> TensorImages:
        labels = torch.randint(0, cfg.num_classes, (n,), generator=g)
        images = 0.8 * patterns[labels] + torch.randn(n, channels, size, size, generator=g)
        return TensorImages(images, labels, augment=False)

    n = cfg.synthetic_size
    return make(cfg.train_subset or n), make(cfg.test_subset or max(n // 4, 2)), cfg.num_classes


_SOURCES: dict[str, Callable[[DataConfig, int], Splits]] = {
    "fashion-mnist": _fashion_mnist,
    "cifar10": _cifar10,
    "imagefolder": _imagefolder,
    "synthetic": _synthetic,
}


def preprocessing(cfg: DataConfig, input_shape: tuple[int, ...]) -> dict:
    """How images were prepared for the model, saved with every artifact so a deployment can do the same.

    Returns:
        ``{"source", "input_shape" (C, H, W), "layout": "NCHW", "dtype": "float32", "scale", "resize",
        "channels", "mean", "std"}``: pixels are ``value * scale`` (uint8 sources: ``1/255``), resized to
        ``resize`` x ``resize`` (bilinear, antialiased; ``None``: native), grey replicated to ``channels``, then
        ``(x - mean) / std`` per channel (``None``: not normalised).
    """
    mean, std = normalization(cfg) or (None, None)
    native = cfg.source in ("fashion-mnist", "cifar10")
    return {"source": cfg.source, "input_shape": list(input_shape), "layout": "NCHW", "dtype": "float32",
            "scale": 1 / 255 if cfg.source != "synthetic" else None,
            "resize": cfg.resize if native or cfg.source == "synthetic" else (cfg.resize or cfg.image_size),
            "channels": cfg.channels, "mean": list(mean) if mean else None, "std": list(std) if std else None}


def load_source(cfg: DataConfig, *, seed: int = 0) -> Splits:
    """Load ``cfg.source``'s train and test datasets and its number of classes."""
    return _SOURCES[cfg.source](cfg, seed)
