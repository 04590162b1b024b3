"""Where each ``nn.Conv2d`` runs: its hyper-parameters plus the input/output spatial size seen in one forward.

The latency of a conv depends on its real input size, so the planner measures candidates at the shapes captured
here rather than at a guessed resolution.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ..measurement.util import forward_inputs
from ..hooks import probe

__all__ = ["ConvShape", "capture_shapes"]


@dataclass(frozen=True)
class ConvShape:
    """Everything that determines one conv's cost for a given batch, dtype and device.

    Attributes:
        in_channels / out_channels / groups: channel layout (depthwise: ``groups == in == out``).
        kernel / stride / padding / dilation: as in ``nn.Conv2d`` (padding as a tuple; string padding kept).
        bias: whether the conv has a bias.
        in_hw / out_hw: spatial size ``(H, W)`` of the input and output seen in the forward pass.
        calls: how often the conv ran in that forward (shared convs are not planned).
    """

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: Any
    dilation: tuple[int, int]
    groups: int
    bias: bool
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    calls: int = 1

    @property
    def depthwise(self) -> bool:
        """One filter per channel: pruning removes input and output channels together."""
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    def signature(self) -> str:
        """A stable text key of the shape (the batch, dtype and device are keyed separately)."""
        pad = "x".join(map(str, self.padding)) if isinstance(self.padding, tuple) else str(self.padding)
        return (f"conv2d_i{self.in_channels}_o{self.out_channels}_k{self.kernel[0]}x{self.kernel[1]}"
                f"_s{self.stride[0]}x{self.stride[1]}_p{pad}_d{self.dilation[0]}x{self.dilation[1]}"
                f"_g{self.groups}_b{int(self.bias)}_hw{self.in_hw[0]}x{self.in_hw[1]}")

    def with_channels(self, in_channels: int, out_channels: int) -> "ConvShape":
        """The same conv with other channel counts (a depthwise conv keeps ``groups == channels``)."""
        groups = in_channels if self.depthwise else self.groups
        return replace(self, in_channels=in_channels, out_channels=out_channels, groups=groups)

    def build(self, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> nn.Conv2d:
        """A fresh (randomly initialised) ``nn.Conv2d`` of this shape, e.g. for timing."""
        return nn.Conv2d(self.in_channels, self.out_channels, self.kernel, stride=self.stride, padding=self.padding,
                         dilation=self.dilation, groups=self.groups, bias=self.bias, device=device, dtype=dtype)

    def out_positions(self) -> int:
        return self.out_hw[0] * self.out_hw[1]

    def in_positions(self) -> int:
        return self.in_hw[0] * self.in_hw[1]


def capture_shapes(model: nn.Module, example_inputs: Any) -> dict[str, ConvShape]:
    """Run one eval-mode forward of ``example_inputs`` and record every ``nn.Conv2d``'s shape.

    Only the first sample is run: spatial sizes do not depend on the batch, and a batch-64 forward of a large
    model costs seconds on a CPU. The model's modes are restored and no weight or statistic changes.

    Args:
        model: the network.
        example_inputs: ``(B, C, H, W)`` (any ``B``) on the model's device.

    Returns:
        Qualified conv name -> :class:`ConvShape`, in call order; convs that never ran are absent.
    """
    seen: dict[str, ConvShape] = {}

    def hook(name: str):
        def record(conv: nn.Conv2d, args: tuple, out: torch.Tensor) -> None:
            if name in seen:
                seen[name] = replace(seen[name], calls=seen[name].calls + 1)
                return
            seen[name] = ConvShape(conv.in_channels, conv.out_channels, tuple(conv.kernel_size), tuple(conv.stride),
                                   conv.padding, tuple(conv.dilation), conv.groups, conv.bias is not None,
                                   tuple(args[0].shape[-2:]), tuple(out.shape[-2:]))
        return record

    args, kwargs = forward_inputs(example_inputs)
    args = tuple(a[:1] if isinstance(a, torch.Tensor) else a for a in args)
    probe(model, [(m, hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)], *args, **kwargs)
    return seen
