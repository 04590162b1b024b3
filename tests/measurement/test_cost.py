"""cost(): hand-computed MACs/params for conv variants, and agreement with torch-pruning's counter."""
from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
import torchvision
from torch import nn

from compress.measurement import cost


def _single(module: nn.Module, shape: tuple[int, ...]):
    torch.manual_seed(0)
    return cost(module, torch.randn(*shape))


@pytest.mark.parametrize(
    "cin,cout,k,groups,dilation,stride,padding,hw,out_hw",
    [
        (8, 16, 3, 1, 1, 1, 1, 10, 10),   # dense
        (8, 16, 3, 4, 1, 1, 1, 10, 10),   # grouped
        (8, 8, 3, 8, 1, 2, 1, 10, 5),     # depthwise, strided
        (8, 16, 3, 1, 2, 1, 0, 10, 6),    # dilated: effective kernel 5 -> 10 - 4 = 6
        (8, 16, 1, 1, 1, 1, 0, 10, 10),   # pointwise 1x1
        (6, 9, 5, 3, 2, 1, 4, 7, 7),      # grouped + dilated, odd sizes
    ],
)
def test_conv_macs_and_params_match_hand_formula(cin, cout, k, groups, dilation, stride, padding, hw, out_hw):
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=False)
    c = _single(conv, (1, cin, hw, hw))
    # MACs = X*Y * K^2 * Cin * Cout / groups; params = Cout * Cin/groups * K^2
    assert c.macs == out_hw * out_hw * k * k * cin * cout // groups
    assert c.params == cout * (cin // groups) * k * k
    assert c.layers[0].output_shape == [1, cout, out_hw, out_hw]
    assert c.layers[0].input_shape == [1, cin, hw, hw]


def test_conv_bias_adds_one_mac_per_output_and_batch_is_divided_out():
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=True)
    c1 = _single(conv, (1, 4, 8, 8))
    c3 = _single(conv, (3, 4, 8, 8))
    assert c1.macs == 8 * 8 * 9 * 4 * 6 + 6 * 8 * 8
    assert c1.params == 6 * 4 * 9 + 6
    assert c3.macs == c1.macs  # per sample
    assert c3.activation_bytes == 3 * c1.activation_bytes == 3 * 6 * 8 * 8 * 4


def test_linear_bn_relu_pool_conventions():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    c = _single(model, (1, 3, 10, 10))
    rows = {r.type: r.macs for r in c.layers}
    assert rows["Conv2d"] == 8 * 8 * 9 * 3 * 4
    assert rows["BatchNorm2d"] == 2 * 4 * 8 * 8   # affine: scale + shift per element
    assert rows["ReLU"] == 4 * 8 * 8
    assert rows["MaxPool2d"] == 4 * 8 * 8         # input elements
    assert rows["AdaptiveAvgPool2d"] == 4 * 4 * 4
    assert rows["Flatten"] == 0
    assert rows["Linear"] == 4 * 5 + 5
    assert c.macs == sum(rows.values())
    assert c.conv_linear_macs == rows["Conv2d"] + rows["Linear"]


def test_reused_module_is_counted_per_call_and_modes_restored():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1, bias=False)
            self.bn = nn.BatchNorm2d(2)

        def forward(self, x):
            return self.bn(self.conv(self.conv(x)))

    m = Twice().train()
    m.bn.eval()  # mixed modes must survive
    before = m.bn.running_mean.clone()
    c = _single(m, (2, 2, 4, 4))
    conv_row = c.by_name()["conv"]
    assert conv_row.calls == 2 and conv_row.macs == 2 * (4 * 4 * 2 * 2)
    assert m.training and m.conv.training and not m.bn.training
    assert torch.equal(m.bn.running_mean, before)


def test_serialized_bytes_tracks_state_dict_size():
    for n in (10, 100):
        raw = (n * n + n) * 4  # float32 weight + bias
        size = _single(nn.Linear(n, n), (1, n)).serialized_bytes
        assert raw <= size <= raw + 8192  # zip container + pickle overhead stays a few KiB


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_totals_equal_torch_pruning(arch):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    tp_macs, tp_params = tp.utils.count_ops_and_params(model, x)
    c = cost(model, x)
    assert c.params == tp_params
    assert c.macs == int(tp_macs)
    # every conv/linear appears as a row with a positive count
    n_conv_linear = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    assert sum(r.macs > 0 for r in c.layers if r.type in ("Conv2d", "Linear")) == n_conv_linear
