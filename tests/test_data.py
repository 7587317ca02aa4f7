"""Tests for fxprune.data: CIFAR-10 (real data, tiny fixtures of each layout) and digits.

The real-data tests use the shared tarball and the default cache; the first run
decodes it once (a few seconds). They skip, saying why, when the tarball is absent.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fxprune import data
from fxprune.data import cifar10, digits, find_cifar10, loader

SRC = find_cifar10()
needs_cifar = pytest.mark.skipif(
    SRC is None, reason="CIFAR-10 tarball not found: set FXPRUNE_CIFAR10 or provide "
                        "../shared/data/cifar10-jpg.tar.gz beside the repository")


def _all(ds: data.ImageTensorDataset, g: torch.Generator | None = None):
    return ds.batch(torch.arange(len(ds)), g)


@needs_cifar
def test_cifar_subset_shapes_labels_and_class_balance() -> None:
    ds = cifar10(train=False, subset=500, seed=3)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y <= 9
    assert len(ds) == 500 and ds.labels.min() >= 0 and ds.labels.max() <= 9
    assert ds.labels.bincount(minlength=10).tolist() == [50] * 10
    assert ds.classes[0] == "airplane" and ds.classes[9] == "truck"
    assert len(cifar10(train=False, subset=503)) == 503  # remainder goes to some classes


@needs_cifar
def test_cifar_normalisation() -> None:
    x, _ = _all(cifar10(train=False, subset=3000, augment=False))
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    assert mean.abs().max() < 0.1, mean
    assert (std - 1).abs().max() < 0.1, std


@needs_cifar
def test_cifar_augmentation_is_a_padded_crop_or_flip() -> None:
    ds = cifar10(train=False, subset=20, augment=True)
    plain = cifar10(train=False, subset=20, augment=False)
    assert ds.augment and not plain.augment
    a, ya = _all(ds, torch.Generator().manual_seed(0))
    b, _ = _all(ds, torch.Generator().manual_seed(1))
    p, yp = _all(plain)
    assert a.shape == p.shape == (20, 3, 32, 32) and torch.equal(ya, yp)
    assert not torch.equal(a, b) and not torch.equal(a, p)
    torch.testing.assert_close(a, _all(ds, torch.Generator().manual_seed(0))[0])
    # every augmented image is one of the 9x9x2 crops/flips of the zero-padded original
    pad_val = (-ds.mean / ds.std).view(1, 3, 1, 1)
    for i in range(3):
        padded = F.pad(p[i:i + 1] - pad_val, (4, 4, 4, 4)) + pad_val
        crops = [padded[..., dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        crops += [c.flip(-1) for c in crops]
        assert min((c - a[i]).abs().max().item() for c in crops) < 1e-5


@needs_cifar
def test_cifar_seeded_subset_is_reproducible() -> None:
    one, two = cifar10(train=False, subset=100, seed=5), cifar10(train=False, subset=100, seed=5)
    other = cifar10(train=False, subset=100, seed=6)
    assert torch.equal(one.images, two.images) and torch.equal(one.labels, two.labels)
    assert not torch.equal(one.images, other.images)


@needs_cifar
def test_loader_batches_are_seeded_and_cover_the_data() -> None:
    ds = cifar10(train=False, subset=100, augment=True)
    dl = loader(ds, batch_size=32, shuffle=True, seed=1)
    batches = list(dl)
    assert len(dl) == len(batches) == 4 and [len(y) for _, y in batches] == [32, 32, 32, 4]
    assert torch.equal(torch.cat([y for _, y in batches]).sort().values, ds.labels.sort().values)
    again = loader(ds, batch_size=32, shuffle=True, seed=1)
    assert torch.equal(next(iter(again))[0], batches[0][0])  # same seed, same epoch
    assert not torch.equal(next(iter(again))[0], batches[0][0])  # epoch 1 differs
    assert len(loader(ds, batch_size=32, drop_last=True)) == 3


def test_cifar_pickle_layout(tmp_path) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    arrays = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        arrays[name] = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        with open(root / name, "wb") as fh:
            pickle.dump({b"data": arrays[name], b"labels": [0, 1, 2, 9]}, fh)
    test = cifar10(tmp_path, train=False, augment=False)
    assert len(test) == 4 and test.labels.tolist() == [0, 1, 2, 9]
    assert torch.equal(test.images, torch.from_numpy(arrays["test_batch"]).view(4, 3, 32, 32))
    assert len(cifar10(root, train=True)) == 20


def test_cifar_image_folder_layout_decodes_once(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FXPRUNE_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    smooth = F.interpolate(torch.rand(4, 3, 4, 4) * 255, size=32, mode="bilinear").to(torch.uint8)
    for i, (split, cls) in enumerate([("train", "cat"), ("train", "dog"),
                                      ("test", "cat"), ("test", "dog")]):
        (tmp_path / "cifar10" / split / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(smooth[i].permute(1, 2, 0).numpy()).save(
            tmp_path / "cifar10" / split / cls / "0000.jpg", quality=100)
    test = cifar10(tmp_path, train=False)
    assert test.classes == ["cat", "dog"] and test.labels.tolist() == [0, 1]
    assert (test.images.int() - smooth[2:].int()).abs().float().mean() < 3  # JPEG is lossy
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 2 and all(n.endswith(".pt") for n in cached)  # both splits, no temps

    def no_decode(*a, **k):
        raise AssertionError("decoded again instead of using the cache")
    monkeypatch.setattr(data, "_decode_all", no_decode)
    assert torch.equal(cifar10(tmp_path, train=True).labels, torch.tensor([0, 1]))


def test_cifar_missing_root_says_what_to_do(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="FXPRUNE_CIFAR10"):
        cifar10(tmp_path / "nowhere")


def test_digits_shapes_split_and_normalisation() -> None:
    train, test = digits(train=True), digits(train=False)
    assert len(train) + len(test) == 1797 and len(test) == 360
    x, y = train[0]
    assert x.shape == (1, 32, 32) and 0 <= y <= 9
    assert train.labels.bincount(minlength=10).min() > 130  # stratified: all classes present
    xt, _ = _all(train)
    assert abs(xt.mean().item()) < 1e-4 and abs(xt.std().item() - 1) < 1e-3
    assert digits(size=16)[0][0].shape == (1, 16, 16)


def test_digits_split_is_deterministic_per_seed() -> None:
    a, b, c = digits(seed=0), digits(seed=0), digits(seed=1)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.labels, c.labels)


def test_dataloader_reads_whole_batches() -> None:
    """DataLoader takes a batch through __getitems__: one batched read, same items."""
    from torch.utils.data import DataLoader

    from fxprune.data import ImageTensorDataset

    data = ImageTensorDataset(torch.randint(0, 255, (10, 3, 32, 32), dtype=torch.uint8),
                              torch.arange(10), (0.5,) * 3, (0.25,) * 3)
    items = data.__getitems__([3, 1])
    assert [y for _, y in items] == [3, 1] and items[0][0].shape == (3, 32, 32)
    assert torch.equal(items[0][0], data[3][0])
    calls = []
    batch = data.batch
    data.batch = lambda idx, generator=None: calls.append(len(idx)) or batch(idx, generator)
    x, y = next(iter(DataLoader(data, batch_size=4)))
    assert calls == [4] and x.shape == (4, 3, 32, 32) and y.tolist() == [0, 1, 2, 3]
