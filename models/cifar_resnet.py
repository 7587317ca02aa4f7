"""CIFAR ResNets (He et al. 2016): ResNet-20/32/56/110 with option-A or -B shortcuts.

Three stages of ``width``, ``2*width``, ``4*width`` channels (16/32/64 by default),
``n`` basic blocks per stage, depth ``6n + 2``. The option-A shortcut (used by
Li et al. "Pruning Filters for Efficient ConvNets" and Liu et al. "Rethinking the
Value of Network Pruning") subsamples spatially with stride 2 and zero-pads the
new channels. It is written as plain tensor ops in ``forward`` (slice + ``F.pad``)
rather than a lambda layer so that ``torch.fx.symbolic_trace`` sees every op and the
channel analysis can follow the padding offsets.

``init_weights`` (Kaiming-normal convs, unit BN) is shared by the other model files.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BasicBlock", "CifarResNet", "init_weights", "resnet20", "resnet32", "resnet56",
           "resnet110"]


def init_weights(model: nn.Module) -> nn.Module:
    """Kaiming-normal (fan_out, ReLU) convs, BN weight 1 / bias 0, zero Linear bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight)
            nn.init.zeros_(m.bias)
    return model


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU.

    ``shortcut="A"``: parameter-free identity; when the shape changes the input is
    subsampled (``x[:, :, ::s, ::s]``) and zero-padded on the channel dim.
    ``shortcut="B"``: 1x1 conv + BN projection when the shape changes.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        changes = stride != 1 or in_planes != planes
        # Option A: python ints fixed at init, so fx bakes them into the graph.
        self.pad_shortcut = changes and shortcut == "A"
        extra = planes - in_planes
        self.pad_lo, self.pad_hi = extra // 2, extra - extra // 2
        if changes and shortcut == "B":
            self.downsample: nn.Module | None = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        else:
            self.downsample = None

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            return self.downsample(x)
        if self.pad_shortcut:
            s = self.stride
            return F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, self.pad_lo, self.pad_hi))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self._shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: conv3x3-BN-ReLU, 3 stages of ``n`` BasicBlocks
    (``width``, ``2*width``, ``4*width`` channels, stride 1/2/2), global average pool, fc.
    """

    def __init__(self, n: int, num_classes: int = 10, in_channels: int = 3, width: int = 16,
                 shortcut: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        in_planes = width
        stages = []
        for i, planes in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def _depth_to_n(depth: int) -> int:
    if (depth - 2) % 6 != 0:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    return (depth - 2) // 6


def resnet20(num_classes: int = 10, **kw) -> CifarResNet:
    """ResNet-20 (n=3): 0.27M params, 40.6M MACs at 32x32."""
    return CifarResNet(_depth_to_n(20), num_classes, **kw)


def resnet32(num_classes: int = 10, **kw) -> CifarResNet:
    """ResNet-32 (n=5)."""
    return CifarResNet(_depth_to_n(32), num_classes, **kw)


def resnet56(num_classes: int = 10, **kw) -> CifarResNet:
    """ResNet-56 (n=9): 0.85M params, 125.5M MACs at 32x32."""
    return CifarResNet(_depth_to_n(56), num_classes, **kw)


def resnet110(num_classes: int = 10, **kw) -> CifarResNet:
    """ResNet-110 (n=18): 1.73M params, 252.9M MACs at 32x32."""
    return CifarResNet(_depth_to_n(110), num_classes, **kw)
