"""Seeded, stratified splits and subsets: every split holds every class in proportion, for every source.

Files on disk are usually sorted by class (ImageFolder lists ``class_a/*`` before ``class_b/*``), so "the first N
images" is one class. Every split here draws per class: class ``c`` with ``n_c`` of ``N`` images gets
``round(k * n_c / N)`` of the ``k`` images drawn (largest remainders settle the total), chosen by a seeded
permutation. The result is returned in the dataset's own order, so a split is reproducible from the seed.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset

from .checks import dataset_labels as read_labels

__all__ = ["SPLIT_VERSION", "dataset_labels", "stratified_sample", "stratified_split", "class_counts", "class_major",
           "mixed"]

# 1: positional slices (first/last N); 2: seeded stratified draws; 3: the same draws, the training split in class-major
# order (so a seeded shuffle draws the same batches however the files are stored) and calibration batches mixed.
# Part of the baseline cache key.
SPLIT_VERSION = 3


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """The ``(N,)`` int64 labels of ``dataset`` (read without loading images where the dataset allows it)."""
    return read_labels(dataset, load=True)


def _quota(counts: torch.Tensor, k: int) -> torch.Tensor:
    """Per-class draws summing to ``k``, proportional to ``counts`` (largest remainders), at most ``counts``."""
    exact = counts.double() * k / max(int(counts.sum()), 1)
    quota = exact.floor().long()
    for c in torch.argsort(exact - quota, descending=True, stable=True)[: k - int(quota.sum())]:
        quota[c] += 1
    return torch.minimum(quota, counts)


def stratified_split(labels: torch.Tensor, k: int, *, seed: int) -> tuple[list[int], list[int]]:
    """Split positions ``0..N-1`` into ``(rest, drawn)`` with ``k`` drawn, per class in proportion.

    Args:
        labels: ``(N,)`` class labels.
        k: positions to draw, ``0 <= k <= N``.
        seed: seeds the per-class permutations.

    Returns:
        ``(rest, drawn)``: sorted position lists, disjoint, together ``0..N-1``.
    """
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    k = max(0, min(int(k), labels.numel()))
    classes, inverse = torch.unique(labels, return_inverse=True)
    quota = _quota(torch.bincount(inverse, minlength=len(classes)), k)
    generator = torch.Generator().manual_seed(seed)
    drawn: list[int] = []
    for c in range(len(classes)):
        members = torch.nonzero(inverse == c).flatten()
        order = members[torch.randperm(members.numel(), generator=generator)]
        drawn += order[: int(quota[c])].tolist()
    chosen = set(drawn)
    return [i for i in range(labels.numel()) if i not in chosen], sorted(drawn)


def stratified_sample(labels: torch.Tensor, k: int, *, seed: int) -> list[int]:
    """``k`` positions of ``0..N-1`` drawn per class in proportion (sorted): :func:`stratified_split`'s draw."""
    return stratified_split(labels, k, seed=seed)[1]


def class_major(positions: Sequence[int], labels: torch.Tensor) -> list[int]:
    """``positions`` ordered by ``(label, position)``: class by class, each class in its own order.

    A dataset stored class by class (an image folder) and the same images stored interleaved (IDX files) give the
    same list, position for position (the k-th image of a class is the k-th either way), so a seeded shuffle of
    it draws the same images in the same order from both.
    """
    label = torch.as_tensor(labels, dtype=torch.long).reshape(-1).tolist()  # one conversion, not one per position
    return sorted(positions, key=lambda i: (label[i], i))


def mixed(positions: Sequence[int], *, seed: int) -> list[int]:
    """``positions`` in a seeded random order (so fixed-order batches of them mix the classes)."""
    order = torch.randperm(len(positions), generator=torch.Generator().manual_seed(seed))
    return [positions[i] for i in order.tolist()]


def class_counts(labels: torch.Tensor, indices: Sequence[int] | None = None, *, num_classes: int) -> list[int]:
    """Images per class (length ``num_classes``) among ``labels[indices]`` (all when ``indices`` is ``None``)."""
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if indices is not None:
        labels = labels[torch.as_tensor(list(indices), dtype=torch.long)]
    return torch.bincount(labels.clamp(0, num_classes - 1), minlength=num_classes).tolist()
