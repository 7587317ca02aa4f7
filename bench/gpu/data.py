"""CIFAR-10 for the GPU training stage: decoded once, held on the device, augmented there.

``read_cifar10(tarball, per_class)`` streams the project's ``cifar10-jpg.tar.gz``
(``cifar10/{train,test}/<class>/<NNNN>.jpg``) and decodes the JPEGs with PIL in a thread
pool (PIL releases the GIL while decoding), optionally keeping only the first
``per_class[split]`` images of each class (the dry run). ``synthetic_cifar`` stands in when the
dry run has no tarball. ``DeviceSplit`` holds one split as uint8 tensors on the training
device; ``train_batches`` draws one epoch: a seeded permutation, then random crop with
4-pixel zero padding and horizontal flip of the whole epoch in one gather, on the device,
then normalised fixed-size batches (no DataLoader, no host-device copy per batch).
"""
from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fxprune.data import CIFAR10_MEAN, CIFAR10_STD

__all__ = ["DeviceSplit", "read_cifar10", "synthetic_cifar", "pad_crop_flip", "train_batches",
           "eval_batches"]

_SPLITS = ("train", "test")


def _decode(raw: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as im:
        return np.asarray(im.convert("RGB"))


def read_cifar10(tarball: Path, per_class: dict[str, int] | None = None
                 ) -> dict[str, tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """{split: (uint8 N×3×32×32, int64 labels, classes)} from the tarball, keeping at most
    ``per_class[split]`` images of each class when given. Entries are sorted by (split,
    class, file), so the result does not depend on the archive order."""
    entries: list[tuple[str, str, str, bytes]] = []
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(tarball, "r:*") as tf:
        for m in tf:
            parts = m.name.split("/")
            if not (m.isfile() and len(parts) >= 3 and parts[-3] in _SPLITS
                    and parts[-1].lower().endswith((".jpg", ".jpeg", ".png"))):
                continue
            key = (parts[-3], parts[-2])
            if per_class is not None and counts.get(key, 0) >= per_class.get(key[0], 0):
                continue
            counts[key] = counts.get(key, 0) + 1
            entries.append((parts[-3], parts[-2], parts[-1], tf.extractfile(m).read()))
    if not entries:
        raise FileNotFoundError(f"no images in {tarball} in the {{train,test}}/<class>/ layout")
    entries.sort(key=lambda e: e[:3])
    classes = sorted({e[1] for e in entries})
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        images = list(pool.map(_decode, [e[3] for e in entries], chunksize=256))
    out = {}
    for split in _SPLITS:
        idx = [i for i, e in enumerate(entries) if e[0] == split]
        hwc = np.stack([images[i] for i in idx]) if idx else np.zeros((0, 32, 32, 3), np.uint8)
        labels = torch.tensor([classes.index(entries[i][1]) for i in idx], dtype=torch.long)
        out[split] = (torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous(), labels, classes)
    return out


def synthetic_cifar(n_train: int, n_test: int, seed: int = 0
                    ) -> dict[str, tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """Learnable stand-in data: each class is a noisy constant colour (dry run only)."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.randint(0, 256, (10, 3, 1, 1), generator=g).float()
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = torch.arange(n) % 10
        x = colours[y] + 40 * torch.randn(n, 3, 32, 32, generator=g)
        out[split] = (x.clamp(0, 255).to(torch.uint8), y, [f"class{i}" for i in range(10)])
    return out


class DeviceSplit:
    """One split on ``device``: uint8 images, int64 labels, normalisation constants."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, device: torch.device):
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.device = device
        self.mean = torch.tensor(CIFAR10_MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(CIFAR10_STD, device=device).view(1, 3, 1, 1) * 255

    def __len__(self) -> int:
        return len(self.labels)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) / self.std
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def pad_crop_flip(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Random ``pad``-pixel zero-padded crop and horizontal flip of every image of
    ``x`` (B×C×H×W, any dtype) in one gather, on ``x``'s device with generator ``g``."""
    b, c, h, w = x.shape
    dev = x.device
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b, 1), generator=g, device=dev)
    ox = torch.randint(0, 2 * pad + 1, (b, 1), generator=g, device=dev)
    flip = torch.rand(b, 1, generator=g, device=dev) < 0.5
    rows = oy + torch.arange(h, device=dev)
    ar = torch.arange(w, device=dev)
    cols = torch.where(flip, ox + (w - 1) - ar, ox + ar)
    bi = torch.arange(b, device=dev).view(b, 1, 1, 1)
    ci = torch.arange(c, device=dev).view(1, c, 1, 1)
    return xp[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def train_batches(split: DeviceSplit, batch_size: int, epoch: int, seed: int = 0
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One augmented epoch: ``len(split) // batch_size`` full batches (the remainder is
    dropped so every step has the same shape), order and augmentation a pure function of
    (seed, epoch)."""
    g = _generator(split.device, seed * 1_000_003 + epoch)
    perm = torch.randperm(len(split), generator=g, device=split.device)
    x = pad_crop_flip(split.images[perm], 4, g)
    y = split.labels[perm]
    for k in range(len(split) // batch_size):
        sl = slice(k * batch_size, (k + 1) * batch_size)
        yield split.normalise(x[sl]), y[sl]


def eval_batches(split: DeviceSplit, batch_size: int
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every image in order, no augmentation."""
    for k in range(0, len(split), batch_size):
        yield split.normalise(split.images[k:k + batch_size]), split.labels[k:k + batch_size]
