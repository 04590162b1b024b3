"""LayerRows: gathered im2col rows times the weight reproduce the layer's output at those rows."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.transforms.reconstruct.rows import LayerRows

CONVS = {
    "plain": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1),
    "strided_dilated": dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=2, dilation=2),
    "rect_reflect": dict(in_channels=4, out_channels=6, kernel_size=(3, 1), padding=(1, 0), padding_mode="reflect"),
    "same": dict(in_channels=4, out_channels=6, kernel_size=4, padding="same"),
    "grouped": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, groups=2),
    "depthwise": dict(in_channels=4, out_channels=8, kernel_size=3, padding=1, groups=4),
}


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
@pytest.mark.parametrize("kind", CONVS)
def test_conv_rows_reproduce_the_output(kind):
    conv = nn.Conv2d(**CONVS[kind], dtype=torch.float64)
    x = torch.randn(3, 4, 9, 8, dtype=torch.float64)
    y = conv(x)
    view = LayerRows(conv)
    assert view.positions(x) == 3 * y.shape[2] * y.shape[3]
    rows = torch.randperm(view.positions(x))[:50]
    xs, ys = view.inputs(x, rows), view.outputs(y, rows)  # (G, R, D), (G, R, O_g)
    assert xs.shape == (view.groups, 50, view.in_features) and ys.shape == (view.groups, 50, view.out_features)
    pred = xs @ view.weight().transpose(1, 2) + view.bias().unsqueeze(1)
    assert torch.allclose(pred, ys, atol=1e-12, rtol=0)


def test_linear_rows_and_channel_selection():
    fc = nn.Linear(5, 4, dtype=torch.float64)
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    view = LayerRows(fc)
    rows = torch.tensor([0, 4, 5])
    wide = torch.randn(2, 3, 9, dtype=torch.float64)
    picked = view.outputs(wide, rows, torch.tensor([8, 0, 2, 3]))
    assert torch.equal(picked[0], wide.reshape(6, 9)[rows][:, [8, 0, 2, 3]])
    pred = view.inputs(x, rows) @ view.weight().transpose(1, 2) + view.bias().unsqueeze(1)
    assert torch.allclose(pred, view.outputs(fc(x), rows), atol=1e-12, rtol=0)


def test_write_round_trips_grouped_weights():
    conv = nn.Conv2d(4, 6, 3, groups=2, bias=False)
    view = LayerRows(conv)
    w = torch.randn(2, 3, 18, dtype=torch.float64)
    view.write(w)
    assert conv.weight.dtype == torch.float32 and torch.allclose(view.weight(), w, atol=1e-6)
    assert view.bias() is None
