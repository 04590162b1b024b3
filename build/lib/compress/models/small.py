"""Small built-in convnets for 28–32 px images (the default recipe's and the benchmarks' baselines).

They reuse torchvision's building blocks so that pruning and rewrites see the same module structure as on the
full-size torchvision models.
"""
from __future__ import annotations

from torch import nn
from torchvision.models import MobileNetV2
from torchvision.models.resnet import BasicBlock

__all__ = ["small_resnet", "small_mobilenet_v2"]


def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or in_planes != planes:
        downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
    layers = [BasicBlock(in_planes, planes, stride=stride, downsample=downsample)]
    layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class SmallResNet(nn.Module):
    """ResNet with a 3x3 stem and torchvision ``BasicBlock`` stages.

    Shape:
        input ``(B, in_channels, H, W)`` -> logits ``(B, num_classes)``.
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128),
                 blocks: tuple[int, ...] = (1, 1, 1)) -> None:
        super().__init__()
        if len(widths) != len(blocks):
            raise ValueError("widths and blocks must have the same length")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, planes = [], widths[0]
        for i, (width, count) in enumerate(zip(widths, blocks)):
            stages.append(_stage(planes, width, count, stride=1 if i == 0 else 2))
            planes = width
        self.layers = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(self.avgpool(x).flatten(1))


def small_resnet(*, num_classes: int = 10, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128),
                 blocks: tuple[int, ...] = (1, 1, 1)) -> nn.Module:
    """A ResNet-style net for small images (default: ~0.7 M params, ~40 MMACs at 28 px)."""
    return SmallResNet(num_classes=num_classes, in_channels=in_channels, widths=tuple(widths), blocks=tuple(blocks))


def small_mobilenet_v2(*, num_classes: int = 10, in_channels: int = 1, width_mult: float = 1.0) -> nn.Module:
    """torchvision's MobileNetV2 with a stride-1 stem and a shortened schedule for 28–32 px images."""
    setting = [  # t, c, n, s  (expansion, channels, repeats, stride)
        [1, 16, 1, 1],
        [6, 24, 2, 1],
        [6, 32, 2, 2],
        [6, 64, 2, 2],
        [6, 96, 1, 1],
    ]
    model = MobileNetV2(num_classes=num_classes, width_mult=width_mult, inverted_residual_setting=setting)
    first = model.features[0][0]
    model.features[0][0] = nn.Conv2d(in_channels, first.out_channels, 3, stride=1, padding=1, bias=False)
    return model
