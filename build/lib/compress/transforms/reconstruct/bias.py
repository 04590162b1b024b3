"""Where a fitted layer's intercept can go without changing the model's structure.

* The layer's own bias, when it has one.
* Else, when its output is read by one BatchNorm and nothing else (torch-pruning's dependency graph says so),
  that BatchNorm's running mean: in eval mode ``bn(y + b)`` equals ``bn(y)`` with ``running_mean - b``, and in
  train mode the batch mean absorbs any constant anyway. The fold is exact.
* Else nowhere: the layer is fitted without an intercept (adding a bias parameter would change the state dict
  that a saved model's structure is rebuilt with).
"""
from __future__ import annotations

import logging
from typing import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..prune.tp_compat import build_graph

__all__ = ["bias_slots", "place_bias"]

LOG = logging.getLogger(__name__)


def bias_slots(model: nn.Module, example_inputs: torch.Tensor,
               layers: Iterable[nn.Module]) -> dict[nn.Module, nn.Module]:
    """``{layer: where its intercept goes}`` (the layer itself or a BatchNorm) for the layers that have a place.

    Args:
        model: the model holding ``layers``; not modified.
        example_inputs: a batch ``(B, C, H, W)`` to trace the model (only needed when a layer has no bias).
        layers: the ``nn.Conv2d`` / ``nn.Linear`` layers to be fitted.
    """
    layers = list(layers)
    slots: dict[nn.Module, nn.Module] = {m: m for m in layers if m.bias is not None}
    rest = [m for m in layers if m.bias is None]
    if not rest:
        return slots
    try:
        graph = build_graph(model, example_inputs[:1])
    except Exception as err:  # noqa: BLE001 - tp cannot trace it: fit those layers without an intercept
        LOG.info("reconstruct: no dependency graph (%s); layers without a bias are fitted without one", err)
        return slots
    for m in rest:
        node = graph.module2node.get(m)
        readers = node.outputs if node is not None else []
        if len(readers) == 1:
            bn = readers[0].module
            if isinstance(bn, _BatchNorm) and bn.running_mean is not None and len(readers[0].inputs) == 1:
                slots[m] = bn
    return slots


@torch.no_grad()
def place_bias(slot: nn.Module, bias: torch.Tensor) -> None:
    """Add the intercept ``bias (O,)`` to ``slot``: a BatchNorm's running mean shifts by ``-bias`` (the layer's
    own bias is written with its weight)."""
    if isinstance(slot, _BatchNorm):
        slot.running_mean.sub_(bias.reshape(-1).to(slot.running_mean))
