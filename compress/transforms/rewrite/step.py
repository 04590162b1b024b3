"""Recipe step ``rewrite``: rewrite the model's dense convs into one structured form.

Example::

    - rewrite:
        kind: separable
        layers: ["layer3.*", "layer4.*"]
        macs_target: 0.6

Accuracy after the step is recorded by the runner; BatchNorm re-calibration and fine-tuning are separate steps.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import asdict
from typing import Any, Literal

from ...config import Config, check
from ...errors import CompressError, ConfigError
from ...recipe.registry import register_step

__all__ = ["RewriteStep", "run_rewrite"]

# Options each kind reads; any other option set to a non-default value is a recipe mistake.
_KIND_OPTIONS: dict[str, tuple[str, ...]] = {
    "grouped": ("groups", "energy_threshold"),
    "separable": ("T", "max_error", "macs_target"),
    "shuffle": ("groups", "width"),
    "dilated": ("dilation",),
    "bottleneck": ("rank", "rank_ratio", "max_error"),
}
_EXCLUSIVE: dict[str, tuple[str, ...]] = {
    "separable": ("T", "max_error", "macs_target"),
    "bottleneck": ("rank", "rank_ratio", "max_error"),
}


@dataclasses.dataclass(frozen=True)
class RewriteStep(Config):
    """Options of the ``rewrite`` step.

    Attributes:
        kind: the rewrite.
        layers: fnmatch patterns over module names; empty: every eligible conv.
        exclude: fnmatch patterns of modules to leave alone.
        min_channels: convs with fewer input or output channels are left alone.
        groups: grouped: an integer or ``"auto"`` (default ``"auto"``); shuffle: an integer (required).
        T: separable: depthwise channel multiplier (default 1).
        max_error: separable/bottleneck: per-layer relative error budget choosing T / rank (separable with
            calibration data: the expected output error; otherwise the weight error).
        macs_target: separable: the model's MACs after the step as a fraction of before, in ``(0, 1]``; T is
            allocated across layers to minimise the summed squared relative output errors.
        calib_batches: separable: calibration batches whose input patch statistics make the factorisation (and
            ``max_error`` / ``macs_target``) data-aware; 0: data-free (weights only).
        rank: bottleneck: projection width.
        rank_ratio: bottleneck: projection width as a fraction of the input channels (default 0.5).
        dilation: dilated: tap spacing in kernel-index units (default ``(K-1)/2``, same receptive field).
        width: shuffle: hidden channels between the grouped 1x1s (default: the conv's output channels).
        energy_threshold: grouped with ``groups: auto``: minimum fraction of weight energy kept.
    """

    kind: Literal["grouped", "separable", "shuffle", "dilated", "bottleneck"]
    layers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_channels: int = 16
    groups: int | str | None = None
    T: int | None = None
    max_error: float | None = None
    macs_target: float | None = None
    calib_batches: int = 8
    rank: int | None = None
    rank_ratio: float | None = None
    dilation: int | None = None
    width: int | None = None
    energy_threshold: float = 0.9

    def validate(self) -> None:
        check(self.min_channels >= 1, "min_channels", "an integer >= 1", self.min_channels)
        check(0.0 < self.energy_threshold <= 1.0, "energy_threshold", "a number in (0, 1]", self.energy_threshold)
        check(self.calib_batches >= 0, "calib_batches", "an integer >= 0", self.calib_batches)
        allowed = _KIND_OPTIONS[self.kind]
        for name in ("groups", "T", "max_error", "macs_target", "rank", "rank_ratio", "dilation", "width"):
            value = getattr(self, name)
            check(value is None or name in allowed, name, f"null (not an option of kind {self.kind!r})", value)
        given = [n for n in _EXCLUSIVE.get(self.kind, ()) if getattr(self, n) is not None]
        if len(given) > 1:
            raise ConfigError(given[1], f"null when {given[0]} is set (give only one of {', '.join(given)})",
                              getattr(self, given[1]))
        self._validate_values()

    def _validate_values(self) -> None:
        if self.kind == "grouped":
            check(self.groups is None or self.groups == "auto" or (isinstance(self.groups, int) and self.groups >= 2),
                  "groups", "an integer >= 2 or 'auto'", self.groups)
        if self.kind == "shuffle":
            check(isinstance(self.groups, int) and self.groups >= 2, "groups", "an integer >= 2", self.groups)
        for name in ("T", "rank", "dilation", "width"):
            value = getattr(self, name)
            check(value is None or value >= 1, name, "an integer >= 1", value)
        check(self.max_error is None or 0.0 <= self.max_error < 1.0, "max_error", "a number in [0, 1)",
              self.max_error)
        check(self.macs_target is None or 0.0 < self.macs_target <= 1.0, "macs_target",
              "a fraction of the model's MACs in (0, 1]", self.macs_target)
        check(self.rank_ratio is None or 0.0 < self.rank_ratio <= 1.0, "rank_ratio", "a number in (0, 1]",
              self.rank_ratio)

    def options(self) -> dict[str, Any]:
        """Keyword options for :func:`compress.transforms.rewrite.apply.rewrite` (unset ones omitted)."""
        opts = {n: getattr(self, n) for n in _KIND_OPTIONS[self.kind] if getattr(self, n) is not None}
        if self.kind == "grouped":
            opts.setdefault("groups", "auto")
        return opts


def _calibration(ctx: Any, cfg: RewriteStep) -> list[Any] | None:
    """The first ``calib_batches`` calibration images on the model's device, for kinds that read them."""
    loader = getattr(getattr(ctx, "data", None), "calib", None)
    if cfg.kind != "separable" or cfg.calib_batches == 0 or loader is None:
        return None
    return [images.to(ctx.example_inputs.device) for images, *_ in itertools.islice(loader, cfg.calib_batches)]


@register_step("rewrite", RewriteStep)
def run_rewrite(ctx: Any, cfg: RewriteStep) -> dict[str, Any]:
    """Rewrite dense convs into grouped, separable, shuffled, dilated or bottleneck form."""
    from .apply import rewrite  # deferred: keeps recipe parsing free of torch-pruning imports

    from ..prune.layer_roles import unknown_layers

    records = rewrite(ctx.model, cfg.kind, include=cfg.layers, exclude=cfg.exclude, min_channels=cfg.min_channels,
                      analysis=ctx.analysis, example_inputs=ctx.example_inputs, calib=_calibration(ctx, cfg),
                      **cfg.options())
    # A layer named exactly (no wildcard) is a request for that layer: failing it is an error, not a skip.
    named = {p for p in cfg.layers if not any(c in p for c in "*?[")}
    refused = [f"{r.layer}: {r.skipped}" for r in records if r.skipped and r.layer in named]
    if refused:
        raise CompressError("layers: cannot rewrite the named layer(s): " + "; ".join(refused))
    return {"layers": [asdict(r) for r in records], "rewritten": sum(r.skipped is None for r in records),
            "unknown_layers": unknown_layers(ctx.model)}
