"""The recipe's ``model:`` section."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import Config, check

__all__ = ["ModelConfig"]


@dataclass(frozen=True)
class ModelConfig(Config):
    """Which model to build and which weights to load.

    Attributes:
        name: ``torchvision:NAME``, ``timm:NAME`` (when timm is installed), ``compress:NAME`` (built-ins:
            ``small_resnet``, ``small_mobilenet_v2``) or ``package.module:factory`` for user code.
        kwargs: keyword arguments for the factory (e.g. ``num_classes``).
        small_input: adapt a torchvision model's stem to 28–32 px images (3x3 stride-1 first conv, no max-pool).
        in_channels: replace the first conv so the model takes this many input channels (``None`` keeps it).
        weights: named pretrained weights, read from the local caches (nothing is downloaded): torchvision's
            ``DEFAULT`` or an enum member such as ``IMAGENET1K_V2``; timm's ``pretrained``, a tag such as
            ``a1_in1k``, or a weights file (see :mod:`compress.models.weights`). ``weights`` inside ``kwargs`` is
            taken as this field.
        checkpoint: a ``state_dict`` or whole-module file with trained weights (read-only: never overwritten).
    """

    name: str = "compress:small_resnet"
    kwargs: dict[str, Any] = field(default_factory=dict)
    small_input: bool = False
    in_channels: int | None = None
    weights: str | None = None
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        if "weights" in self.kwargs:  # torchvision users write kwargs: {weights: DEFAULT}; it is this field
            kwargs = dict(self.kwargs)
            moved = kwargs.pop("weights")
            if self.weights is not None and moved != self.weights:
                from ..errors import ConfigError

                raise ConfigError("kwargs.weights", "the same value as weights (give it once)", moved)
            object.__setattr__(self, "kwargs", kwargs)
            object.__setattr__(self, "weights", None if moved is None else str(moved))

    def validate(self) -> None:
        check(":" in self.name and all(self.name.split(":", 1)), "name",
              "'torchvision:NAME', 'timm:NAME', 'compress:NAME' or 'package.module:factory'", self.name)
        check(self.in_channels is None or self.in_channels >= 1, "in_channels", "an integer >= 1 or null",
              self.in_channels)
        # an empty path would silently mean "no checkpoint" and train a baseline instead of loading the user's
        check(self.checkpoint is None or bool(self.checkpoint.strip()), "checkpoint", "a file path or null",
              self.checkpoint)

    def spec(self) -> dict[str, Any]:
        """The architecture part (no checkpoint) — what :func:`compress.models.build_model` needs."""
        return {"name": self.name, "kwargs": dict(self.kwargs), "small_input": self.small_input,
                "in_channels": self.in_channels, "weights": self.weights}
