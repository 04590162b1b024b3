"""Fold inference-mode BatchNorms into the convolutions that feed them: the form a model is deployed in.

In eval mode ``bn(conv(x))`` is one affine conv: ``W' = W * g / sqrt(v + eps)`` per output channel and
``b' = (b - m) * g / sqrt(v + eps) + beta``. Every deployment runtime (ONNX Runtime, TensorRT, OpenVINO,
``torch.jit.freeze``) performs this fold, so latency measured on an unfolded model overstates the cost of
the BatchNorms and of the per-op overhead a compressed model has to beat.

The fold itself is torch's: :func:`torch.fx.experimental.optimization.fuse` on an fx-traceable model (it
fuses a conv/BN pair only where the conv's output feeds nothing but the BN). A model fx cannot trace falls back
to :func:`torch.nn.utils.fusion.fuse_conv_bn_eval` on the pairs found at run time (a BN whose input is the
very tensor a ``Conv2d`` just produced), each fold kept only if the model's output on ``example_inputs`` still
matches the original's; a pair that fails stays unfolded (:func:`unfolded_batchnorms` counts what is left).
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ...module_tree import set_module

__all__ = ["fold_batchnorm", "unfolded_batchnorms", "FOLD_RTOL"]

FOLD_RTOL = 1e-4  # the fallback's acceptance: a fold is a reassociation of float math, not an approximation


def unfolded_batchnorms(model: nn.Module) -> int:
    """BatchNorm modules still present in ``model`` (0 after a complete fold)."""
    return sum(isinstance(m, _BatchNorm) for m in model.modules())


def fold_batchnorm(model: nn.Module, *, example_inputs: torch.Tensor | None = None) -> nn.Module:
    """An eval-mode copy of ``model`` with each ``Conv2d -> BatchNorm2d`` pair folded into one conv.

    ``model`` is never modified. With fx the result is a :class:`torch.fx.GraphModule` (the folded BNs are
    gone from it); without, the copy keeps its structure and each folded BN becomes ``nn.Identity``.

    Args:
        model: the network (any mode; the copy is put in eval mode, as folding needs running statistics).
        example_inputs: ``(B, C, H, W)``, used only when fx cannot trace the model: to find conv/BN pairs at
            run time and to check the fold; without it such a model is returned unfolded.

    Returns:
        The folded copy, in eval mode; same outputs as ``model.eval()`` up to float rounding.
    """
    twin = copy.deepcopy(model).eval()
    try:
        return fuse(twin, inplace=True)
    except Exception:  # noqa: BLE001 - fx cannot trace it (data-dependent control flow, ...): fall back
        pass
    if example_inputs is None:
        return twin
    return _fold_pairs(twin, example_inputs)


def _pairs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, str]]:
    """``(conv name, bn name)`` where a BN's input is the very tensor a dense-layout ``Conv2d`` returned."""
    produced: dict[int, str] = {}
    pairs: list[tuple[str, str]] = []
    hooks = []

    def after_conv(name: str):
        return lambda module, args, out: produced.__setitem__(id(out), name)

    def before_bn(name: str):
        return lambda module, args: pairs.append((produced[id(args[0])], name)) if id(args[0]) in produced else None

    for name, m in model.named_modules():
        if type(m) is nn.Conv2d:
            hooks.append(m.register_forward_hook(after_conv(name)))
        elif type(m) is nn.BatchNorm2d and m.track_running_stats:
            hooks.append(m.register_forward_pre_hook(before_bn(name)))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    # a conv or BN called more than once (shared module) cannot be folded for one call alone
    convs = [c for c, _ in pairs]
    bns = [b for _, b in pairs]
    return [(c, b) for c, b in dict.fromkeys(pairs) if convs.count(c) == 1 and bns.count(b) == 1]


def _fold_pairs(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Fold the run-time conv/BN pairs of ``model`` (eval mode) one at a time, each kept only if exact.

    A conv whose output also feeds something besides its BN (a residual add, say) makes that fold inexact:
    the output check on ``x`` rejects it and the pair stays unfolded.
    """
    with torch.inference_mode():
        want = model(x)
    if not isinstance(want, torch.Tensor):
        return model
    atol = FOLD_RTOL * want.abs().max().item()
    for conv_name, bn_name in _pairs(model, x):
        trial = copy.deepcopy(model)
        conv, bn = trial.get_submodule(conv_name), trial.get_submodule(bn_name)
        set_module(trial, conv_name, fuse_conv_bn_eval(conv, bn))
        set_module(trial, bn_name, nn.Identity())
        with torch.inference_mode():
            if torch.allclose(trial(x), want, rtol=FOLD_RTOL, atol=atol):
                model = trial
    return model
