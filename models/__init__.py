"""The pruning papers' CIFAR models, by name.

    model = fxprune.models.get_model("resnet56", num_classes=10)
    fxprune.models.list_models()  # ['densenet40', 'preresnet164', 'resnet110', ...]

All models take 32x32 inputs, accept ``num_classes`` and ``in_channels`` (e.g. 1 for
the digits demo), use Kaiming init (``init_weights``, also what Scratch-E/B re-apply), and trace with ``torch.fx.symbolic_trace``.
ResNets also take ``width`` (base width) and ``shortcut`` ("A" or "B"), PreResNet
``width``, DenseNet ``growth_rate`` and ``compression``, VGGs ``cfg``.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .cifar_resnet import CifarResNet, init_weights, resnet20, resnet32, resnet56, resnet110
from .densenet import DenseNet, densenet40
from .preresnet import PreResNet, preresnet164
from .vgg import VGG, vgg16, vgg19

__all__ = ["VGG", "CifarResNet", "DenseNet", "PreResNet", "get_model", "init_weights", "list_models"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "vgg16": vgg16,
    "vgg19": vgg19,
    "preresnet164": preresnet164,
    "densenet40": densenet40,
}


def list_models() -> list[str]:
    """Names accepted by :func:`get_model`, sorted."""
    return sorted(_REGISTRY)


def get_model(name: str, num_classes: int = 10, **kw) -> nn.Module:
    """Build the model called ``name`` (case-insensitive) with freshly initialised weights.

    Extra keyword arguments go to the model's constructor (``in_channels``, ``width`` ...).
    """
    key = name.lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _REGISTRY[key](num_classes=num_classes, **kw)
