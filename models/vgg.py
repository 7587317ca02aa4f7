"""CIFAR VGGs of the pruning papers.

- ``vgg16``: the variant of Li et al. 2017 ("Pruning Filters for Efficient ConvNets",
  following Zagoruyko's cifar.torch): 13 conv3x3-BN-ReLU layers, AvgPool2d(2), and a
  Linear(512, 512)-BN1d-ReLU-Linear(512, classes) head. 15.0M params.
- ``vgg19``: the variant of Liu et al. 2017 ("Network Slimming"): 16 conv3x3-BN-ReLU
  layers, AvgPool2d(2), a single Linear(512, classes). 20.0M params.

A custom ``cfg`` (ints = conv widths, ``"M"`` = 2x2 max-pool) builds a thinner or
pruned-from-scratch variant, as in "Rethinking the Value of Network Pruning".
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .cifar_resnet import init_weights

__all__ = ["VGG", "VGG16_CFG", "VGG19_CFG", "vgg16", "vgg19"]

VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                    512, 512, 512, "M", 512, 512, 512)
VGG19_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                                    512, 512, 512, 512, "M", 512, 512, 512, 512)


class VGG(nn.Module):
    """VGG for 32x32 inputs: ``features`` (conv3x3-BN-ReLU per int in ``cfg``, MaxPool2d(2)
    per ``"M"``), AvgPool2d(2) to 1x1, flatten, then ``classifier``.

    ``hidden=None`` gives a single Linear head (Network Slimming); ``hidden=512`` gives
    Linear-BN1d-ReLU-Linear (Li et al.).
    """

    def __init__(self, cfg: Sequence[int | str], num_classes: int = 10, in_channels: int = 3,
                 hidden: int | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1, bias=False),
                           nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AvgPool2d(2)
        if hidden is None:
            self.classifier: nn.Module = nn.Linear(c, num_classes)
        else:
            self.classifier = nn.Sequential(
                nn.Linear(c, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                nn.Linear(hidden, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg16(num_classes: int = 10, in_channels: int = 3,
          cfg: Sequence[int | str] = VGG16_CFG, hidden: int = 512) -> VGG:
    """VGG-16 of Li et al. 2017: 15.0M params, 313.5M MACs at 32x32."""
    return VGG(cfg, num_classes, in_channels, hidden=hidden)


def vgg19(num_classes: int = 10, in_channels: int = 3,
          cfg: Sequence[int | str] = VGG19_CFG) -> VGG:
    """VGG-19 of Network Slimming: 20.0M params, 398.1M MACs at 32x32."""
    return VGG(cfg, num_classes, in_channels, hidden=None)
