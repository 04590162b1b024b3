"""A user's own data: ``data: {source: mypkg.data:make_loaders, kwargs: {...}}``.

The factory is imported from the current directory or ``PYTHONPATH`` and called as ``factory(**kwargs)``. It
returns a mapping with the keys ``train`` and ``test`` (required), ``val`` and ``calib`` (optional), each a
``Dataset`` or a ``DataLoader`` yielding ``(images (B, C, H, W) float32, labels (B,) int64)``, and optionally
``num_classes`` (otherwise one more than the largest training label). Datasets are split and batched like the
built-in sources (a missing ``val`` / ``calib`` is a seeded stratified draw from ``train``); loaders are used as
given, and a missing ``calib`` is then drawn from the training loader's dataset.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

from torch.utils.data import DataLoader, Dataset

from ..errors import CompressError
from .checks import dataset_labels

__all__ = ["is_factory", "load_factory", "UserData"]

KEYS = ("train", "val", "test", "calib", "num_classes")


def is_factory(source: str) -> bool:
    """Whether ``source`` names a user factory (``package.module:function``) rather than a built-in source."""
    module, _, attr = source.partition(":")
    return bool(module) and bool(attr) and all(p.isidentifier() for p in module.split(".")) and attr.isidentifier()


def _import(source: str) -> Callable[..., Any]:
    module, _, attr = source.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise CompressError(f"data.source: cannot import the data factory {source!r} ({err}); expected "
                            "'package.module:function' importable from the current directory or PYTHONPATH") from None


class UserData:
    """What a factory returned (or what a caller passed in memory), checked: datasets or loaders per split, and
    the class count."""

    def __init__(self, source: str, parts: Mapping[str, Any]) -> None:
        self.source = source
        self.parts = dict(parts)

    @classmethod
    def checked(cls, source: str, parts: Any) -> "UserData":
        """``parts`` checked against the contract (a mapping with ``train`` and ``test`` datasets or loaders).

        Raises:
            CompressError: anything else, naming ``source`` and what was expected.
        """
        if not isinstance(parts, Mapping):
            raise CompressError(f"data.source: {source} returned {type(parts).__name__}; expected a mapping with "
                                "the keys train and test (and optionally val, calib, num_classes)")
        unknown = [k for k in parts if k not in KEYS]
        missing = [k for k in ("train", "test") if parts.get(k) is None]
        if unknown or missing:
            what = f"unknown key {unknown[0]!r}" if unknown else f"no {missing[0]!r}"
            raise CompressError(f"data.source: {source} returned {what}; expected the keys train and test (and "
                                "optionally val, calib, num_classes)")
        for key in ("train", "val", "test", "calib"):
            part = parts.get(key)
            if part is not None and not isinstance(part, (Dataset, DataLoader)):
                raise CompressError(f"data.source: {source} returned {type(part).__name__} for {key!r}; expected "
                                    "a torch Dataset or DataLoader")
        return cls(source, parts)

    def dataset(self, split: str) -> Dataset | None:
        """The split's dataset (a loader's ``dataset``), ``None`` when the factory gave none."""
        part = self.parts.get(split)
        return part.dataset if isinstance(part, DataLoader) else part

    def loader(self, split: str) -> DataLoader | None:
        """The split's loader when the factory gave a loader, else ``None``."""
        part = self.parts.get(split)
        return part if isinstance(part, DataLoader) else None

    def num_classes(self) -> int:
        """``num_classes`` as given, else one more than the largest training label."""
        given = self.parts.get("num_classes")
        if given is not None:
            if not isinstance(given, int) or isinstance(given, bool) or given < 2:
                raise CompressError(f"data.source: {self.source} returned num_classes={given!r}; expected an "
                                    "integer >= 2")
            return given
        labels = dataset_labels(self.dataset("train"), load=True)
        return int(labels.max()) + 1 if labels.numel() else 2


def load_factory(source: str, kwargs: Mapping[str, Any]) -> UserData:
    """Call the factory ``source`` with ``kwargs`` and check what it returned.

    Raises:
        CompressError: the factory cannot be imported, raises, or returns something other than a mapping with
            ``train`` and ``test`` datasets or loaders.
    """
    factory = _import(source)
    try:
        parts = factory(**dict(kwargs))
    except TypeError as err:
        raise CompressError(f"data.kwargs: {source} rejected the arguments {dict(kwargs)} ({err})") from None
    return UserData.checked(source, parts)
