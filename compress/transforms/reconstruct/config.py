"""Options of layer-wise least-squares reconstruction (:func:`compress.transforms.reconstruct.reconstruct`)."""
from __future__ import annotations

import dataclasses

from ...config import MAX_BATCH, Config, check

__all__ = ["FitOptions", "ReconstructOptions"]


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class FitOptions(Config):
    """How each layer's least-squares system is built and solved (validated on construction).

    Attributes:
        ridge: Tikhonov term relative to the mean diagonal of the layer's input Gram matrix, pulling the fit
            towards the layer's current weights; ``>= 0``.
        rows_per_batch: most rows (output positions) sampled per batch and layer, seeded; ``>= 1``.
        max_condition: a layer whose regularised system has a larger condition estimate keeps its weights.
        seed: seed of the row sampling.
    """

    ridge: float = 1e-4
    rows_per_batch: int = 2048
    max_condition: float = 1e12
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        check(_number(self.ridge) and self.ridge >= 0, "ridge", "a number >= 0", self.ridge)
        check(isinstance(self.rows_per_batch, int) and not isinstance(self.rows_per_batch, bool)
              and 1 <= self.rows_per_batch <= MAX_BATCH * 64, "rows_per_batch",
              f"an integer in [1, {MAX_BATCH * 64}]", self.rows_per_batch)
        check(_number(self.max_condition) and self.max_condition > 1, "max_condition", "a number > 1",
              self.max_condition)
        check(isinstance(self.seed, int) and not isinstance(self.seed, bool), "seed", "an integer", self.seed)

    def fit_kwargs(self) -> dict[str, float | int]:
        """These options as keyword arguments of :class:`ReconstructOptions` (or of :func:`reconstruct`)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(FitOptions)}


@dataclasses.dataclass(frozen=True)
class ReconstructOptions(FitOptions):
    """:class:`FitOptions` and how much calibration data is read (validated on construction).

    Attributes:
        max_batches: use at most this many calibration batches (``None``: all of them).
    """

    max_batches: int | None = None

    def validate(self) -> None:
        super().validate()
        check(self.max_batches is None or (isinstance(self.max_batches, int) and not isinstance(self.max_batches, bool)
                                           and self.max_batches >= 1),
              "max_batches", "an integer >= 1 or null", self.max_batches)
