"""Tiny models for the CLI, io and pass tests (importable as ``tiny_models:NAME``
by a subprocess with ``tests/`` on PYTHONPATH)."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["TinyNet", "TinyOther", "dead_half", "tiny", "tiny_kernel1", "tiny_other"]


class TinyNet(nn.Module):
    """conv-bn-relu x2, a residual add, pool, fc: one coupled group plus a plain one."""

    def __init__(self, width: int = 8, num_classes: int = 4, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(x)))
        y = torch.relu(self.bn3(self.conv3(y)) + y)
        return self.fc(torch.flatten(self.pool(y), 1))


def tiny(width: int = 8) -> TinyNet:
    """The CLI's model spec ``tiny_models:tiny``; seeded so every call is identical."""
    torch.manual_seed(0)
    return TinyNet(width).eval()


class TinyOther(TinyNet):
    """Another architecture: a ReLU6 module after conv2 instead of torch.relu."""

    def __init__(self) -> None:
        super().__init__(8)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        y = self.act(self.bn2(self.conv2(x)))
        y = torch.relu(self.bn3(self.conv3(y)) + y)
        return self.fc(torch.flatten(self.pool(y), 1))


def tiny_other() -> nn.Module:
    """A different graph (plan mismatch at the node after bn2)."""
    torch.manual_seed(0)
    return TinyOther().eval()


def tiny_kernel1() -> nn.Module:
    """The same graph with a 1x1 conv2: only the weights tell it apart."""
    torch.manual_seed(0)
    m = TinyNet(8)
    m.conv2 = nn.Conv2d(8, 16, 1, bias=False)
    return m.eval()


def dead_half(width: int = 8) -> TinyNet:
    """TinyNet whose odd channels in every group are exactly dead (zero filters, zero
    BN affine, zero consumer weights), so L1 pruning at ratio 0.5 removes exactly
    them and the pruned model equals the original in eval mode."""
    m = tiny(width)
    with torch.no_grad():
        for conv, bn, nxt in ((m.conv1, m.bn1, [m.conv2]), (m.conv2, m.bn2, [m.conv3, m.fc]),
                              (m.conv3, m.bn3, [m.fc])):
            dead = torch.arange(1, conv.out_channels, 2)
            conv.weight[dead] = 0
            bn.weight[dead] = 0
            bn.bias[dead] = 0
            for layer in nxt:
                layer.weight[:, dead] = 0
    return m
