"""Static cost of a model: parameters, multiply-accumulates (MACs), activation memory, checkpoint size.

The MAC conventions follow torch-pruning's ``tp.utils.count_ops_and_params`` (a ptflops derivative) so the
totals agree with it on standard convnets:

* ``ConvNd``: ``X·Y·K²·Cin·Cout/groups`` per sample (output spatial ``X·Y``), plus ``Cout·X·Y`` when it has a
  bias. Groups, dilation and stride only enter through ``groups`` and the output size.
* ``ConvTransposeNd``: like a conv but over the *input* spatial size (each input pixel scatters a kernel);
  torch-pruning uses the output size here, so totals differ for transposed convs (none in our models).
* ``Linear``: ``in·out`` per output row, plus ``out`` for the bias.
* ``BatchNorm``/``InstanceNorm``/``GroupNorm``: ``numel(input)``, doubled when affine; ``LayerNorm`` likewise.
* Activations (``ReLU``, ``ReLU6``, ``PReLU``, ``ELU``, ``LeakyReLU``, ``GELU``): ``numel(output)``.
* Pooling (max/avg, adaptive): ``numel(input)``; ``Upsample``: ``numel(output)``.
* Anything else (``Hardswish``, ``SiLU``, ``Dropout``, ``Identity``, functional ops) counts zero.

Counts are per sample: the total over the batch is divided by the batch size of ``example_inputs``, as
torch-pruning does. Modules are matched with ``isinstance`` (torch-pruning matches exact types, so a
*subclass* of ``nn.Conv2d`` is zero there but counted here). A module called several times in one forward
(e.g. ResNet's shared ``relu``) is counted once per call, again like torch-pruning.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..hooks import probe
from .util import forward_inputs, leaf_modules, tensor_shape

__all__ = ["Cost", "LayerCost", "cost", "module_macs"]

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.GELU)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
          nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
          nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm)


@dataclass
class LayerCost:
    """One leaf module's cost.

    Attributes:
        name: qualified module name (``"layer1.0.conv1"``).
        type: class name (``"Conv2d"``).
        input_shape / output_shape: shapes seen on the first call (batch dimension included).
        params: parameters owned directly by the module.
        macs: per-sample MACs summed over all calls.
        calls: how many times the module ran in the forward pass.
        activation_bytes: bytes of the module's outputs, summed over calls (whole batch).
    """

    name: str
    type: str
    input_shape: list[int] | None
    output_shape: list[int] | None
    params: int
    macs: int = 0
    calls: int = 0
    activation_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "input_shape": self.input_shape,
                "output_shape": self.output_shape, "params": self.params, "macs": self.macs,
                "calls": self.calls, "activation_bytes": self.activation_bytes}


@dataclass
class Cost:
    """Totals and per-layer rows returned by :func:`cost`.

    Attributes:
        params: all parameters of the model (``sum(p.numel())``, shared parameters once).
        macs: per-sample MACs of all leaf modules (torch-pruning conventions, see module docstring).
        layers: one :class:`LayerCost` per leaf module that ran, in first-call order.
        activation_bytes: bytes of all leaf-module outputs for the given ``example_inputs`` batch.
        serialized_bytes: size of ``torch.save(model.state_dict())``.
    """

    params: int
    macs: int
    layers: list[LayerCost] = field(default_factory=list)
    activation_bytes: int = 0
    serialized_bytes: int = 0

    @property
    def conv_linear_macs(self) -> int:
        """MACs of convolutions and linear layers only (the part every counting convention agrees on)."""
        return sum(r.macs for r in self.layers if "Conv" in r.type or r.type == "Linear")

    def by_name(self) -> dict[str, LayerCost]:
        return {r.name: r for r in self.layers}


def _conv_macs(m: nn.modules.conv._ConvNd, inp: torch.Tensor, out: torch.Tensor) -> int:
    # Transposed convs scatter one kernel per *input* position; plain convs gather one per output position.
    positions = math.prod(inp.shape[2:] if m.transposed else out.shape[2:])
    per_position = math.prod(m.kernel_size) * m.in_channels * (m.out_channels // m.groups)
    bias = m.out_channels * math.prod(out.shape[2:]) if m.bias is not None else 0
    return positions * per_position + bias


def _linear_macs(m: nn.Linear, inp: torch.Tensor, out: torch.Tensor) -> int:
    rows = math.prod(inp.shape[1:-1])  # tokens per sample; 1 for (B, F) inputs
    return rows * m.in_features * m.out_features + (m.out_features if m.bias is not None else 0)


def module_macs(m: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    """Per-sample MACs of one call of leaf module ``m`` mapping ``inp`` (B, ...) to ``out`` (B, ...)."""
    per_sample: Callable[[torch.Tensor], int] = lambda t: math.prod(t.shape[1:])  # noqa: E731
    if isinstance(m, nn.modules.conv._ConvNd):
        return _conv_macs(m, inp, out)
    if isinstance(m, nn.Linear):
        return _linear_macs(m, inp, out)
    if isinstance(m, _NORMS):
        affine = getattr(m, "affine", False)
        return per_sample(inp) * (2 if affine else 1)
    if isinstance(m, nn.LayerNorm):
        return per_sample(inp) * (2 if m.elementwise_affine else 1)
    if isinstance(m, _ACTIVATIONS):
        return per_sample(out)
    if isinstance(m, _POOLS):
        return per_sample(inp)
    if isinstance(m, nn.Upsample):
        return per_sample(out)
    return 0


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def serialized_size(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` written to memory."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def cost(model: nn.Module, example_inputs: Any) -> Cost:
    """Count parameters, MACs and activation memory with one forward pass.

    The model runs once under ``torch.no_grad()`` in eval mode (so BatchNorm statistics are untouched); every
    module's train/eval flag is restored afterwards.

    Args:
        model: any ``nn.Module``.
        example_inputs: a tensor ``(B, C, H, W)`` (usually ``B = 1``) on the model's device, or a tuple/list
            of positional inputs, or a dict of keyword inputs.

    Returns:
        A :class:`Cost`; ``macs`` is per sample (divided by ``B``).
    """
    rows: dict[nn.Module, LayerCost] = {}

    def hook(name: str) -> Callable:
        def record(m: nn.Module, args: tuple, output: Any) -> None:
            ins, outs = _tensors(args), _tensors(output)
            row = rows.get(m)
            if row is None:
                own = sum(p.numel() for p in m.parameters(recurse=False))
                row = rows[m] = LayerCost(name, type(m).__name__, tensor_shape(ins), tensor_shape(outs), own)
            row.calls += 1
            row.activation_bytes += sum(t.numel() * t.element_size() for t in outs)
            if ins and outs:
                row.macs += module_macs(m, ins[0], outs[0])
        return record

    args, kwargs = forward_inputs(example_inputs)
    probe(model, [(m, hook(name)) for name, m in leaf_modules(model)], *args, **kwargs)
    layers = list(rows.values())  # MACs are already per sample: every formula works on per-sample sizes
    params = sum(p.numel() for p in model.parameters())
    return Cost(params=params, macs=sum(r.macs for r in layers), layers=layers,
                activation_bytes=sum(r.activation_bytes for r in layers), serialized_bytes=serialized_size(model))
