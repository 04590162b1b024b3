"""Recipe step ``drop``: replace identity-shortcut residual blocks by the identity.

Example::

    - drop: {max_error: 0.05, max_blocks: 2}      # the blocks that lose <= 5% of their output energy
    - drop: {blocks: [layer1.1, layer3.1]}        # these blocks
    - drop: {max_error: 0.05, reconstruct: true}  # then refit the layers towards the original

Each block's drop error (the fraction of its output energy lost when it becomes the identity) is measured on
calibration batches with every block in place, before any is dropped (:func:`~compress.transforms.blocks.drop.
block_drop_errors`): errors of neighbours compound, which the accuracy recorded after the step shows. The
latency planner (``plan`` with form ``drop``) chooses blocks by measured time instead.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from ...config import Config, check
from ...errors import ConfigError
from ...recipe.registry import register_step
from ..reconstruct.step import Reconstruction, reconstruct_in_step

__all__ = ["DropStep", "drop_step"]


@dataclasses.dataclass(frozen=True)
class DropStep(Config):
    """Options of the ``drop`` step.

    Attributes:
        blocks: qualified names of the blocks to drop; empty: choose them by ``max_error``.
        max_error: drop every droppable block whose measured drop error is at most this, lowest first.
        max_blocks: drop at most this many of those (``null``: no limit).
        calib_batches: calibration batches the errors are measured on (and, with ``reconstruct``, fitted on).
        reconstruct: after dropping, refit the remaining layers towards the original by least squares
            (:mod:`compress.transforms.reconstruct.step`).
    """

    blocks: tuple[str, ...] = ()
    max_error: float | None = None
    max_blocks: int | None = None
    calib_batches: int = 8
    reconstruct: bool = False

    def validate(self) -> None:
        if bool(self.blocks) == (self.max_error is not None):
            raise ConfigError("blocks" if self.blocks else "max_error",
                              "exactly one of blocks (a list of block names) or max_error (a fraction)",
                              "both" if self.blocks else "neither")
        check(self.max_error is None or 0.0 <= self.max_error < 1.0, "max_error", "a number in [0, 1)",
              self.max_error)
        check(self.max_blocks is None or self.max_blocks >= 1, "max_blocks", "null or an integer >= 1",
              self.max_blocks)
        check(self.calib_batches >= 1, "calib_batches", "an integer >= 1", self.calib_batches)


def choose_blocks(errors: dict[str, float], *, max_error: float, max_blocks: int | None) -> list[str]:
    """Blocks with ``error <= max_error``, lowest error first, at most ``max_blocks``."""
    fit = sorted((e, n) for n, e in errors.items() if e <= max_error)
    return [n for _, n in fit[:max_blocks]]


@dataclasses.dataclass(frozen=True)
class DropDetails(Reconstruction):
    """What the ``drop`` step measured and did (and, with ``reconstruct: true``, the :class:`Reconstruction`
    fields).

    Attributes:
        errors: per droppable block, the relative output energy it loses when replaced by the identity
            (measured with every block in place), rounded to 6 digits.
        dropped: the blocks replaced, in order.
        analysis_invalidated: the run's analysis was dropped because layers are gone.
    """

    errors: dict[str, float] = dataclasses.field(default_factory=dict)
    dropped: list[str] = dataclasses.field(default_factory=list)
    analysis_invalidated: bool = False


@register_step("drop", DropStep, DropDetails)
def drop_step(ctx: Any, cfg: DropStep) -> DropDetails:
    """Replace identity-shortcut residual blocks by the identity (named, or those losing little output energy)."""
    from ...training import distributed as D
    from .drop import block_drop_errors, drop_blocks

    ctx.model = D.unwrap(ctx.model)
    batches = ctx.calibration(cfg.calib_batches)
    errors = block_drop_errors(ctx.model, batches)
    chosen = list(cfg.blocks) or choose_blocks(errors, max_error=cfg.max_error, max_blocks=cfg.max_blocks)
    dropped = drop_blocks(ctx.model, chosen) if chosen else []
    if dropped:
        ctx.analysis = None  # the analysis describes layers that are gone
    details = DropDetails(errors={n: round(e, 6) for n, e in errors.items()}, dropped=dropped,
                          analysis_invalidated=bool(dropped))
    if cfg.reconstruct:
        details = dataclasses.replace(details, **reconstruct_in_step(ctx, batches, kind="drop", details=details))
    return details
