"""NaN/Inf detection for analysis: weights before the data is run, activation statistics after.

Statistics of a non-finite activation are themselves NaN/Inf and would turn every later decision (dead
channels, correlations, pruning importance) into noise, so analysis stops with the first layer at fault.
"""
from __future__ import annotations

from itertools import chain
from typing import Any

import torch
from torch import nn

from ..errors import CompressError

__all__ = ["check_finite_weights", "check_finite_statistics"]

_STAT_KEYS = ("min", "max", "mean")  # min/max propagate NaN and hold +-Inf, so they catch every bad value


def check_finite_weights(model: nn.Module) -> None:
    """Raise :class:`CompressError` naming the first parameter or buffer holding NaN/Inf.

    One device-to-host sync when everything is finite (the common case).
    """
    tensors = [(n, t) for n, t in chain(model.named_parameters(), model.named_buffers()) if t.is_floating_point()]
    if not tensors:
        return
    finite = torch.stack([torch.isfinite(t.detach()).all().to("cpu") for _, t in tensors])
    if bool(finite.all()):
        return
    name, tensor = tensors[int((~finite).nonzero()[0])]
    count = int((~torch.isfinite(tensor.detach())).sum())
    raise CompressError(f"analysis: {name} holds {count} non-finite (NaN/Inf) values of {tensor.numel()}; "
                        "expected finite weights (check the checkpoint, or the step that produced this model)")


def check_finite_statistics(info: dict[str, Any], stats: dict[str, dict[str, torch.Tensor]]) -> None:
    """Raise :class:`CompressError` naming the first layer (module order) whose activations were NaN/Inf.

    Args:
        info: layer name -> ``LayerInfo`` (its ``point`` is where the activation was measured), module order.
        stats: layer name -> per-channel statistics ``(C,)`` from the accumulator.
    """
    for name, layer in info.items():
        values = stats.get(name, {})
        bad = [k for k in _STAT_KEYS if k in values and not bool(torch.isfinite(values[k]).all())]
        if bad:
            channels = sorted({int(c) for k in bad for c in (~torch.isfinite(values[k])).nonzero().flatten()})
            shown = ", ".join(map(str, channels[:8])) + (", ..." if len(channels) > 8 else "")
            raise CompressError(f"analysis: layer {name} produced non-finite (NaN/Inf) activations on the "
                                f"calibration data (measured at {layer.point}, channels {shown}); it is the "
                                "first such layer in module order: expected finite values (check the input "
                                "data's normalisation and the weights up to this layer)")
