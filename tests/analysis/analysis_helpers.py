"""Tiny nets with planted truths for the analysis tests."""
from __future__ import annotations

import math
from collections import Counter

import torch
from torch import nn

__all__ = ["DeadNet", "plant_dead", "block_model", "adjusted_rand_index", "labels_of", "random_batches"]


def random_batches(n: int, *, batch: int = 8, shape: tuple[int, ...] = (3, 16, 16), seed: int = 0,
                   dtype: torch.dtype = torch.float32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches of ``(inputs (batch, *shape), labels (batch,))`` from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn((batch, *shape), generator=gen, dtype=dtype), torch.zeros(batch, dtype=torch.long))
            for _ in range(n)]


class DeadNet(nn.Module):
    """depthwise conv-BN-ReLU, conv-ReLU(in place), conv-BN-ReLU, grouped 1x1 conv-ReLU6, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv2d(3, 3, 3, padding=1, groups=3, bias=False)
        self.dw_bn, self.dw_act = nn.BatchNorm2d(3), nn.ReLU()
        self.conv0, self.act0 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True)
        self.conv1, self.bn1, self.act1 = nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        self.conv2, self.act2 = nn.Conv2d(16, 16, 1, groups=2), nn.ReLU6()
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw_act(self.dw_bn(self.dw(x)))
        x = self.act0(self.conv0(x))
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.conv2(x))
        return self.head(x.mean((2, 3)))


def _pre_activation(net: nn.Module, module: nn.Module, batches: list) -> torch.Tensor:
    """Outputs of ``module`` over ``batches`` as ``(C, N)`` (taken before any in-place activation)."""
    outs = []
    hook = module.register_forward_hook(lambda m, a, out: outs.append(out.transpose(0, 1).flatten(1).clone()))
    net.eval()
    for x, _ in batches:
        net(x)
    hook.remove()
    return torch.cat(outs, 1)


def _calibrate_bn(net: nn.Module, bn: nn.BatchNorm2d, batches: list, gen: torch.Generator) -> None:
    """Running stats of ``bn`` from the data (cumulative average), then a random affine part."""
    bn.reset_running_stats()
    bn.momentum = None
    net.eval()
    bn.train()
    for x, _ in batches:
        net(x)
    bn.eval()
    bn.momentum = 0.1
    bn.weight.copy_(0.5 + torch.rand(bn.num_features, generator=gen))
    bn.bias.copy_(0.2 * torch.randn(bn.num_features, generator=gen))


def _center_bias(net: nn.Module, conv: nn.Conv2d, batches: list) -> None:
    """Shift ``conv``'s bias so every channel's pre-activation has median 0 (half the ReLU outputs live)."""
    conv.bias -= _pre_activation(net, conv, batches).median(1).values


def _bn_const(bn: nn.BatchNorm2d, c: int, x: float) -> float:
    """What eval-mode ``bn`` outputs on channel ``c`` for the constant input ``x``."""
    scale = float(bn.weight[c]) / math.sqrt(float(bn.running_var[c]) + bn.eps)
    return (x - float(bn.running_mean[c])) * scale + float(bn.bias[c])


@torch.no_grad()
def plant_dead(net: DeadNet, batches: list, *, seed: int = 0) -> dict[str, dict[int, tuple[str, float | None]]]:
    """Make every channel of ``net`` live on ``batches``, plant dead ones, return ``{layer: {c: (kind, value)}}``.

    Layer by layer (so later layers see the planted earlier ones): BatchNorm running stats come from the data
    and biases of BN-less convs are centred, so unplanted channels are about half active.
    """
    gen = torch.Generator().manual_seed(seed)
    truth: dict[str, dict[int, tuple[str, float | None]]] = {"dw": {}, "conv0": {}, "conv1": {}, "conv2": {}}
    _calibrate_bn(net, net.dw_bn, batches, gen)
    net.dw.weight[2] = 0.0  # zero filter before BN: carries relu(bn(0))
    net.dw_bn.bias[2] = 0.6
    truth["dw"][2] = ("zero_filter", max(0.0, _bn_const(net.dw_bn, 2, 0.0)))

    _center_bias(net, net.conv0, batches)
    net.conv0.bias[5] = -1e3  # always negative before ReLU
    truth["conv0"][5] = ("constant", 0.0)
    _plant_apoz(net, batches, channel=7, zeros=0.995)
    truth["conv0"][7] = ("apoz", None)

    _calibrate_bn(net, net.bn1, batches, gen)
    net.conv1.weight[3] = 0.0  # zero filter before BN with a positive constant
    net.bn1.bias[3] = 0.8
    truth["conv1"][3] = ("zero_filter", max(0.0, _bn_const(net.bn1, 3, 0.0)))
    net.bn1.weight[1], net.bn1.bias[1] = 0.0, -0.5  # zero gamma, relu(beta) = 0
    truth["conv1"][1] = ("zero_gamma", 0.0)
    net.bn1.weight[2], net.bn1.bias[2] = 0.0, 0.3  # zero gamma, relu(beta) = 0.3
    truth["conv1"][2] = ("zero_gamma", float(torch.tensor(0.3)))
    net.conv1.weight[5], net.bn1.weight[5], net.bn1.bias[5] = 0.0, 0.0, 0.6  # both: zero_filter wins
    truth["conv1"][5] = ("zero_filter", float(torch.tensor(0.6)))

    _center_bias(net, net.conv2, batches)
    net.conv2.weight[0], net.conv2.bias[0] = 0.0, 0.0  # zero filter and zero bias
    truth["conv2"][0] = ("zero_filter", 0.0)
    net.conv2.weight[12], net.conv2.bias[12] = 0.0, 2.0  # zero filter, relu6(2) = 2
    truth["conv2"][12] = ("zero_filter", 2.0)
    net.conv2.weight[4] = 0.0  # reads only conv1's dead channel 1 (always 0): constant bias
    net.conv2.weight[4, 1], net.conv2.bias[4] = 1.3, 0.7
    truth["conv2"][4] = ("constant", float(torch.tensor(0.7)))
    net.conv2.bias[9] = -1e3
    truth["conv2"][9] = ("constant", 0.0)
    return truth


def _plant_apoz(net: DeadNet, batches: list, *, channel: int, zeros: float) -> None:
    """Set conv0's bias so that exactly ``zeros`` of ``channel``'s pre-activations over ``batches`` are <= 0."""
    net.conv0.bias[channel] = 0.0
    values = _pre_activation(net, net.conv0, batches)[channel].sort().values
    k = int(round(zeros * values.numel()))
    net.conv0.bias[channel] = -float(values[k - 1:k + 1].mean())  # midway between the k-th and (k+1)-th value


def block_model(groups: int, per_group: int, *, seed: int = 0, noise: float = 0.3
                ) -> tuple[nn.Module, torch.Tensor, int]:
    """A 1x1 conv whose output channels form ``groups`` independent blocks under a hidden permutation.

    Input channels per group: one shared factor plus ``per_group`` private noise channels; each output of a
    group reads ``±U(0.7, 1.3) * factor + noise * private``, so within-group ``|corr|`` is about 0.9 and
    across groups 0. Returns ``(model, truth labels (C,), input channels)``.
    """
    gen = torch.Generator().manual_seed(seed)
    c_out, stride = groups * per_group, per_group + 1
    perm = torch.randperm(c_out, generator=gen)
    truth = torch.empty(c_out, dtype=torch.long)
    conv = nn.Conv2d(groups * stride, c_out, 1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        for t in range(c_out):
            j, g, i = int(perm[t]), t // per_group, t % per_group
            truth[j] = g
            sign = 1.0 if torch.rand(1, generator=gen) < 0.5 else -1.0
            conv.weight[j, g * stride, 0, 0] = sign * (0.7 + 0.6 * float(torch.rand(1, generator=gen)))
            conv.weight[j, g * stride + 1 + i, 0, 0] = noise
    return nn.Sequential(conv), truth, groups * stride


def adjusted_rand_index(a: list[int] | torch.Tensor, b: list[int] | torch.Tensor) -> float:
    """Adjusted Rand index of two labelings (Hubert & Arabie, 1985)."""
    a, b = [int(v) for v in a], [int(v) for v in b]
    comb = lambda n: n * (n - 1) / 2  # noqa: E731
    index = sum(comb(v) for v in Counter(zip(a, b)).values())
    sum_a = sum(comb(v) for v in Counter(a).values())
    sum_b = sum(comb(v) for v in Counter(b).values())
    expected = sum_a * sum_b / comb(len(a))
    maximum = (sum_a + sum_b) / 2
    return 1.0 if maximum == expected else (index - expected) / (maximum - expected)


def labels_of(partition: list[list[int]], channels: int) -> list[int]:
    """Group label of every channel in a partition."""
    labels = [-1] * channels
    for g, group in enumerate(partition):
        for c in group:
            labels[c] = g
    return labels
