"""A Conv2d or Linear as ``groups`` independent linear maps on rows: ``y_row = W_g x_row + b_g`` per group.

A conv's row is one output position: the ``(C_in / groups) · kh · kw`` input patch of every channel of a group
(im2col), in the order of ``weight.reshape(out, -1)``, taken from the input padded the way the conv pads it
(``padding_mode``, ``'same'`` included), honouring stride and dilation. Only sampled rows are gathered, never the
whole unfolded input. A Linear's row is one position of its leading axes. Grouped and depthwise convs are one
system per group.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LayerRows"]


class LayerRows:
    """Rows of inputs and outputs of one ``nn.Conv2d`` / ``nn.Linear``, and its weights as ``(G, O_g, D)``.

    Args:
        module: the layer; its weights are read and written by :meth:`weight`, :meth:`bias`, :meth:`write`.
    """

    def __init__(self, module: nn.Conv2d | nn.Linear) -> None:
        self.module = module
        self.conv = isinstance(module, nn.Conv2d)
        self.groups = module.groups if self.conv else 1
        out = module.out_channels if self.conv else module.out_features
        self.out_features = out // self.groups
        self.in_features = module.weight[0].numel()  # (C_in / groups) * kh * kw, or in_features

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        c = self.module
        mode = "constant" if c.padding_mode == "zeros" else c.padding_mode
        return F.pad(x, c._reversed_padding_repeated_twice, mode=mode)

    def _grid(self, x: torch.Tensor) -> tuple[int, int]:
        """Output ``(H', W')`` of the conv for the padded input ``x (B, C, Hp, Wp)``."""
        c = self.module
        (kh, kw), (sh, sw), (dh, dw) = c.kernel_size, c.stride, c.dilation
        return (x.shape[2] - dh * (kh - 1) - 1) // sh + 1, (x.shape[3] - dw * (kw - 1) - 1) // sw + 1

    def positions(self, x: torch.Tensor) -> int:
        """Rows available in the input ``x``: ``B · H' · W'`` for a conv, the product of leading axes for a Linear."""
        if not self.conv:
            return x.numel() // x.shape[-1]
        h, w = self._grid(self._padded(x[:1]))
        return x.shape[0] * h * w

    def inputs(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The input rows ``rows`` (indices into :meth:`positions`) of ``x``: ``(G, R, D)``.

        Args:
            x: the layer's input, ``(B, C_in, H, W)`` or ``(..., in_features)``.
            rows: ``(R,)`` int64 flat indices over ``(B, H', W')`` (conv) or the leading axes (Linear).
        """
        if not self.conv:
            return x.reshape(-1, x.shape[-1])[rows].unsqueeze(0)
        c = self.module
        xp = self._padded(x)
        h, w = self._grid(xp)
        b, rem = rows // (h * w), rows % (h * w)
        top, left = (rem // w) * c.stride[0], (rem % w) * c.stride[1]
        (kh, kw), (dh, dw) = c.kernel_size, c.dilation
        taps = [xp[b, :, top + i * dh, left + j * dw] for i in range(kh) for j in range(kw)]  # each (R, C_in)
        patches = torch.stack(taps, 2)  # (R, C_in, kh*kw): channel-major like the weight
        return patches.reshape(rows.numel(), self.groups, self.in_features).transpose(0, 1)

    def outputs(self, y: torch.Tensor, rows: torch.Tensor, channels: torch.Tensor | None = None) -> torch.Tensor:
        """The rows ``rows`` of an output ``y`` of this layer's shape, split by group: ``(G, R, O_g)``.

        Args:
            y: ``(B, C, H', W')`` (conv) or ``(..., C)`` (Linear); ``C`` may exceed this layer's width when
                ``channels`` picks from it.
            rows: ``(R,)`` flat row indices, as for :meth:`inputs`.
            channels: ``(O,)`` the channel of ``y`` for each of this layer's outputs (``None``: all, in order).
        """
        flat = y.movedim(1, -1).reshape(-1, y.shape[1]) if self.conv else y.reshape(-1, y.shape[-1])
        picked = flat[rows] if channels is None else flat[rows][:, channels.to(flat.device)]
        return picked.reshape(rows.numel(), self.groups, self.out_features).transpose(0, 1)

    def weight(self) -> torch.Tensor:
        """The current weight as ``(G, O_g, D)`` float64."""
        return self.module.weight.detach().double().reshape(self.groups, self.out_features, self.in_features)

    def bias(self) -> torch.Tensor | None:
        """The current bias as ``(G, O_g)`` float64, ``None`` when the layer has none."""
        b = self.module.bias
        return None if b is None else b.detach().double().reshape(self.groups, self.out_features)

    @torch.no_grad()
    def write(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Set the weight from ``(G, O_g, D)`` (and the layer's own bias from ``(G, O_g)`` when given)."""
        w = self.module.weight
        w.copy_(weight.reshape(w.shape).to(w))
        if bias is not None:
            self.module.bias.copy_(bias.reshape(-1).to(self.module.bias))
