"""DenseNet-40 (growth 12) for CIFAR, as in the Network Slimming code.

A first conv3x3 with ``2*growth`` (24) channels, then three dense blocks of 12
basic layers (BN-ReLU-conv3x3 producing ``growth`` channels, concatenated onto
the input with ``torch.cat``), separated by transitions BN-ReLU-conv1x1-avgpool2
with compression 1 (no channel reduction), then BN-ReLU-avgpool-fc. Channel widths
grow 24 -> 168 -> 312 -> 456. The concats are where channel analysis must track
offsets: every layer's output is a slice of every later layer's input.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .cifar_resnet import init_weights

__all__ = ["DenseLayer", "DenseNet", "Transition", "densenet40"]


class DenseLayer(nn.Module):
    """BN-ReLU-conv3x3 to ``growth`` channels, concatenated after the input."""

    def __init__(self, in_planes: int, growth: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        return torch.cat([x, out], 1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1-avgpool2 between dense blocks."""

    def __init__(self, in_planes: int, out_planes: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv1(F.relu(self.bn1(x))), 2)


class DenseNet(nn.Module):
    """DenseNet-(3n+4) without bottlenecks: conv3x3, three dense blocks of ``n`` layers
    joined by transitions, then BN-ReLU, global average pool and fc.
    """

    def __init__(self, depth: int = 40, num_classes: int = 10, in_channels: int = 3,
                 growth_rate: int = 12, compression: float = 1.0):
        super().__init__()
        if (depth - 4) % 3 != 0:
            raise ValueError(f"DenseNet depth must be 3n+4, got {depth}")
        n = (depth - 4) // 3
        c = 2 * growth_rate
        self.conv1 = nn.Conv2d(in_channels, c, 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        for i in range(3):
            layers = []
            for _ in range(n):
                layers.append(DenseLayer(c, growth_rate))
                c += growth_rate
            blocks.append(nn.Sequential(*layers))
            if i < 2:
                out = int(math.floor(c * compression))
                blocks.append(Transition(c, out))
                c = out
        (self.dense1, self.trans1, self.dense2, self.trans2, self.dense3) = blocks
        self.bn = nn.BatchNorm2d(c)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trans1(self.dense1(self.conv1(x)))
        x = self.dense3(self.trans2(self.dense2(x)))
        x = self.avgpool(F.relu(self.bn(x)))
        return self.fc(torch.flatten(x, 1))


def densenet40(num_classes: int = 10, **kw) -> DenseNet:
    """DenseNet-40 (growth 12, compression 1): 1.06M params, 282.9M MACs at 32x32."""
    return DenseNet(40, num_classes, **kw)
