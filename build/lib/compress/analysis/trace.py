"""Find, for every ``nn.Conv2d``, the module after which its channels hold their final values.

A conv's output usually flows through a BatchNorm and an activation before anything else reads it; dead
channels and correlations must be measured *there*. :func:`trace_chains` runs one forward pass with hooks on
every leaf module and follows each conv's output tensor by identity: the next leaf module called is a
follower only if it receives that very tensor object (``args[0] is out``) unmodified (same version counter).
Allowed followers are a BatchNorm with matching channels (only directly after the conv), then one activation
module (``ReLU``-like, ``Sigmoid``, ...). An in-place ``ReLU`` returns the same object, which is fine.

Limits (by design): functional activations (``F.relu(x)``) are invisible to module hooks, so the point stays at
the BatchNorm; an in-place functional op between two modules (``out += identity`` in a ResNet block) bumps the
version counter and ends the chain, so the point is taken *before* the residual add, which is the value the
conv's channel itself carries.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["Chain", "ACTIVATIONS", "BATCHNORMS", "trace_chains", "leaf_modules"]

# Elementwise activation modules that may end a conv's chain.
ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus,
)
BATCHNORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm2d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class Chain:
    """Where one call of a conv ends up.

    Attributes:
        conv: qualified name of the conv.
        point: qualified name of the module whose output holds the final values (the conv itself, its BN or
            its activation).
        ordinal: which call of ``point`` (0-based, counted over all calls of that module in one forward pass)
            produced those values; shared modules (ResNet's single ``relu``) are called several times.
        bn: qualified name of the following BatchNorm, or ``None``.
        activation: class name of the following activation module (``"ReLU"``), or ``None``.
    """

    conv: str
    point: str
    ordinal: int
    bn: str | None = None
    activation: str | None = None


class _Pending:
    """The chain being followed: the last tensor produced along it and how far it got."""

    def __init__(self, conv: str, channels: int, tensor: torch.Tensor, ordinal: int) -> None:
        self.conv, self.channels = conv, channels
        self.point, self.ordinal = conv, ordinal
        self.bn: str | None = None
        self.activation: str | None = None
        self.tensor, self.version = tensor, tensor._version
        self.expect: nn.Module | None = None  # module matched in its pre-hook, awaiting its post-hook
        self.update: dict[str, Any] = {}


def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` for modules without children (each module once, first name wins)."""
    return [(n, m) for n, m in model.named_modules() if next(m.children(), None) is None]


class _Tracer:
    def __init__(self, model: nn.Module) -> None:
        self.names = {m: n for n, m in model.named_modules()}
        self.calls: Counter[str] = Counter()
        self.pending: _Pending | None = None
        self.chains: list[Chain] = []

    def _follower(self, p: _Pending, module: nn.Module, args: tuple) -> dict[str, Any] | None:
        """The chain update if ``module`` continues ``p`` (else ``None``)."""
        if not args or args[0] is not p.tensor or args[0]._version != p.version:
            return None
        name, ordinal = self.names[module], self.calls[self.names[module]] - 1
        if isinstance(module, nn.Identity):
            return {}
        if p.bn is None and p.activation is None and isinstance(module, BATCHNORMS) \
                and module.num_features == p.channels:
            return {"bn": name, "point": name, "ordinal": ordinal}
        if p.activation is None and isinstance(module, ACTIVATIONS):
            return {"activation": type(module).__name__, "point": name, "ordinal": ordinal}
        return None

    def pre(self, module: nn.Module, args: tuple) -> None:
        self.calls[self.names[module]] += 1
        p = self.pending
        if p is None:
            return
        update = self._follower(p, module, args)
        if update is None:
            self.finish()
        else:
            p.expect, p.update = module, update

    def post(self, module: nn.Module, args: tuple, output: Any) -> None:
        p = self.pending
        if p is not None and p.expect is module and isinstance(output, torch.Tensor):
            for key, value in p.update.items():
                setattr(p, key, value)
            p.tensor, p.version, p.expect = output, output._version, None
            if p.activation is not None:
                self.finish()
            return
        if isinstance(module, nn.Conv2d) and isinstance(output, torch.Tensor):
            name = self.names[module]
            self.pending = _Pending(name, module.out_channels, output, self.calls[name] - 1)

    def finish(self) -> None:
        p, self.pending = self.pending, None
        if p is not None:
            self.chains.append(Chain(p.conv, p.point, p.ordinal, p.bn, p.activation))


def trace_chains(model: nn.Module, example: torch.Tensor) -> list[Chain]:
    """Run ``model(example)`` once and return one :class:`Chain` per conv call, in call order.

    Args:
        model: the network (put in eval mode by the caller).
        example: an input batch, e.g. ``(1, C, H, W)``; one sample is enough since only the structure matters.

    The forward runs under ``torch.no_grad`` (not ``inference_mode``: version counters are needed). Hooks are
    removed before returning, also on error.
    """
    tracer = _Tracer(model)
    handles = []
    try:
        for _, module in leaf_modules(model):
            handles.append(module.register_forward_pre_hook(tracer.pre))
            handles.append(module.register_forward_hook(tracer.post))
        with torch.no_grad():
            model(example)
        tracer.finish()
    finally:
        for handle in handles:
            handle.remove()
    return tracer.chains
