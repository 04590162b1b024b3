"""Recipe step ``rewrite``: rewrite the model's dense convs into one structured form.

Example::

    - rewrite:
        kind: separable
        layers: ["layer3.*", "layer4.*"]
        macs_target: 0.6
        reconstruct: true     # then refit the layers towards the original on the calib batches

Accuracy after the step is recorded by the runner; BatchNorm re-calibration and fine-tuning are separate steps.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ...config import Config, check, join_path, parse, parse_fields
from ...errors import CompressError, ConfigError
from ...recipe.registry import register_step
from ..reconstruct.step import Reconstruction, reconstruct_in_step
from .registry import KindOptions, config_for_kind, kinds
from .selection import LayerSelection

if TYPE_CHECKING:  # the applier imports torch-pruning; recipe parsing must not
    from .apply import RewriteRecord

__all__ = ["RewriteStep", "run_rewrite"]

@dataclasses.dataclass(frozen=True)
class RewriteStep(Config):
    """Options of the ``rewrite`` step: the ones every kind shares, plus the kind's own, flat in the recipe.

    Attributes:
        kind: a registered rewrite kind (:func:`~compress.transforms.rewrite.registry.kinds`).
        layers: fnmatch patterns over module names; empty: every eligible conv.
        exclude: fnmatch patterns of modules to leave alone.
        min_channels: convs with fewer input or output channels are left alone.
        calib_batches: calibration batches whose input patch statistics make data-aware kinds (separable:
            the factorisation, ``max_error`` and ``macs_target``) use the expected output error; 0: data-free.
        reconstruct: after the rewrite, refit the layers towards the original by least squares on
            ``calib_batches`` calibration batches (:mod:`compress.transforms.reconstruct.step`; needs >= 1).
        options: the kind's options (its ``Options`` class, e.g. separable ``T`` / ``max_error`` /
            ``macs_target``, grouped ``groups`` / ``energy_threshold``), given in the recipe beside ``kind``.
    """

    kind: str
    layers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_channels: int = 16
    calib_batches: int = 8
    reconstruct: bool = False
    options: KindOptions | None = None

    def validate(self) -> None:
        check(self.kind in kinds(), "kind", "one of " + ", ".join(repr(k) for k in kinds()), self.kind)
        check(self.calib_batches >= 0, "calib_batches", "an integer >= 0", self.calib_batches)
        check(not self.reconstruct or self.calib_batches >= 1, "calib_batches",
              "an integer >= 1 when reconstruct is true", self.calib_batches)
        self.selection()  # min_channels and the patterns: the selection's own checks and wording

    def selection(self) -> LayerSelection:
        """The convs this step considers, as :func:`~compress.transforms.rewrite.apply.rewrite` takes them."""
        return LayerSelection(include=self.layers, exclude=self.exclude, min_channels=self.min_channels)

    @classmethod
    def from_dict(cls, data: Any, *, file: str | None = None, path: str = "") -> "RewriteStep":
        """The shared keys parse into the step, the others into the kind's ``Options`` (one wording)."""
        shared = [f.name for f in dataclasses.fields(cls) if f.name != "options"]
        if not isinstance(data, dict) or "kind" not in data:
            return parse_fields(cls, data, file=file, path=path)  # the generic "missing"/"a mapping" errors
        kind = data["kind"]
        if not isinstance(kind, str) or kind not in kinds():
            raise ConfigError(join_path(path, "kind"), "one of " + ", ".join(repr(k) for k in kinds()), kind,
                              file=file)
        options_cls = config_for_kind(kind).Options
        own = [f.name for f in dataclasses.fields(options_cls)]
        unknown = [k for k in data if k not in shared and k not in own]
        if unknown:
            raise ConfigError(join_path(path, str(unknown[0])), f"one of the keys {', '.join(shared + own)} "
                              f"(kind {kind!r})", "an unknown key", file=file)
        step = parse_fields(cls, {k: v for k, v in data.items() if k in shared}, file=file, path=path)
        options = parse(options_cls, {k: v for k, v in data.items() if k in own}, file=file, path=path)
        return dataclasses.replace(step, options=options)

    def plain_items(self) -> list[tuple[str, Any]]:
        items = [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "options"]
        return items + (self.options.plain_items() if self.options is not None else [])

    def kind_options(self) -> KindOptions:
        """The kind's options (its defaults when the step was built without them)."""
        return self.options if self.options is not None else config_for_kind(self.kind).Options()


def _calibration(ctx: Any, cfg: RewriteStep) -> list[Any] | None:
    """The first ``calib_batches`` calibration images on the run's device, for kinds that read them."""
    if not config_for_kind(cfg.kind).reads_inputs or cfg.calib_batches == 0:
        return None
    return [images for images, _ in ctx.calibration(cfg.calib_batches)] or None


@dataclasses.dataclass(frozen=True)
class RewriteDetails(Reconstruction):
    """What the ``rewrite`` step did (and, with ``reconstruct: true``, the :class:`Reconstruction` fields).

    Attributes:
        layers: one :class:`~compress.transforms.rewrite.apply.RewriteRecord` per conv considered (rewritten
            or skipped with its reason).
        unknown_layers: layers with weights of their own that no transform understands (left alone).
    """

    layers: list[RewriteRecord] = dataclasses.field(default_factory=list)
    unknown_layers: list[str] = dataclasses.field(default_factory=list)

    @property
    def rewritten(self) -> int:
        """Convs rewritten (not skipped)."""
        return sum(r.skipped is None for r in self.layers)

    def to_plain(self) -> dict[str, Any]:
        return {**super().to_plain(), "rewritten": self.rewritten}

    def report_notes(self) -> list[str]:
        """The layers kept dense because the model's own forward failed with them replaced."""
        from .apply import FORWARD_FAILS

        return [f"{r.layer} kept dense: {r.skipped}" for r in self.layers
                if (r.skipped or "").startswith(FORWARD_FAILS)]


@register_step("rewrite", RewriteStep, RewriteDetails)
def run_rewrite(ctx: Any, cfg: RewriteStep) -> RewriteDetails:
    """Rewrite dense convs into grouped, separable, shuffled, dilated or bottleneck form."""
    from .apply import rewrite  # deferred: keeps recipe parsing free of torch-pruning imports

    from ..prune.layer_roles import unknown_layers

    records = rewrite(ctx.model, cfg.kind_options(), select=cfg.selection(), analysis=ctx.analysis,
                      example_inputs=ctx.example_inputs, calib=_calibration(ctx, cfg))
    # A layer named exactly (no wildcard) is a request for that layer: failing it is an error, not a skip.
    named = {p for p in cfg.layers if not any(c in p for c in "*?[")}
    refused = [f"{r.layer}: {r.skipped}" for r in records if r.skipped and r.layer in named]
    if refused:
        raise CompressError("layers: cannot rewrite the named layer(s): " + "; ".join(refused))
    details = RewriteDetails(layers=list(records), unknown_layers=unknown_layers(ctx.model))
    if cfg.reconstruct:
        details = dataclasses.replace(details, **reconstruct_in_step(ctx, ctx.calibration(cfg.calib_batches),
                                                                     kind="rewrite", details=details))
    return details
