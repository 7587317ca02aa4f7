"""Pre-activation ResNet-164 with bottleneck blocks, as in the Network Slimming code.

Each bottleneck is BN-ReLU-conv1x1, BN-ReLU-conv3x3 (carries the stride),
BN-ReLU-conv1x1 (expansion 4), added to the un-activated input; a 1x1 conv
projection (no BN, as in the Slimming code) replaces the identity when the shape
changes. Three stages of 18 blocks with 16/32/64 base widths (64/128/256 outputs),
then BN-ReLU-avgpool-fc. The Slimming code's ``channel_selection`` layers are not
part of the model: fxprune removes channels physically instead.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cifar_resnet import init_weights

__all__ = ["Bottleneck", "PreResNet", "preresnet164"]


class Bottleneck(nn.Module):
    """Pre-activation bottleneck: three BN-ReLU-conv stages plus (projected) identity."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        if stride != 1 or in_planes != out_planes:
            self.downsample: nn.Module | None = nn.Conv2d(in_planes, out_planes, 1, stride,
                                                          bias=False)
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        residual = x if self.downsample is None else self.downsample(x)
        return out + residual


class PreResNet(nn.Module):
    """Pre-activation ResNet-(9n+2) for 32x32 inputs: conv3x3, 3 stages of ``n``
    bottlenecks (base widths ``width``, ``2*width``, ``4*width``; strides 1/2/2),
    then BN-ReLU, global average pool and fc.
    """

    def __init__(self, depth: int = 164, num_classes: int = 10, in_channels: int = 3,
                 width: int = 16):
        super().__init__()
        if (depth - 2) % 9 != 0:
            raise ValueError(f"PreResNet depth must be 9n+2, got {depth}")
        n = (depth - 2) // 9
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        in_planes = width
        stages = []
        for i, planes in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(in_planes, planes, 2 if (i > 0 and j == 0) else 1))
                in_planes = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(in_planes)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = self.avgpool(F.relu(self.bn(x)))
        return self.fc(torch.flatten(x, 1))


def preresnet164(num_classes: int = 10, **kw) -> PreResNet:
    """PreResNet-164 (18 bottlenecks per stage): 1.70M params, 247.6M MACs at 32x32."""
    return PreResNet(164, num_classes, **kw)
