"""Small in-memory data sets for the experiments and the demo: CIFAR-10 and digits.

CIFAR-10 is read from any of three layouts:

- the ``cifar-10-batches-py`` folder of the original release (python pickles);
- an image folder ``[cifar10/]{train,test}/<class>/<NNNN>.jpg``;
- the project's tarball ``cifar10-jpg.tar.gz`` of that image folder (the default:
  ``$FXPRUNE_CIFAR10``, else ``../shared/data/cifar10-jpg.tar.gz`` beside the repo).

JPEGs are decoded once, straight from the tarball stream (no 60k files unpacked
anywhere), into uint8 tensors cached per split as ``.pt`` files under
``$FXPRUNE_CACHE`` or ``~/.cache/fxprune`` (written to a temp file, then
``os.replace``d, so an interrupted or concurrent run never leaves half a file).
Decoding all 60k takes a few seconds; later loads take a fraction of a second.

Images stay uint8 in memory; normalisation and augmentation (pad 4, random crop
32, horizontal flip) run on tensors per batch. :func:`loader` gives a fast,
seeded, vectorised batch iterator; a plain ``torch.utils.data.DataLoader``
(``num_workers=0`` is fine) also works on the data sets, augmenting per item.

``digits()`` is scikit-learn's bundled 8x8 digits upsampled to 32x32: the demo's
embedded data, no network or files needed.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .errors import FxPruneError

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "ImageTensorDataset", "TensorLoader", "balanced_indices",
           "cache_dir",
           "cifar10", "digits", "find_cifar10", "loader"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_SPLITS = ("train", "test")
_IMG_EXT = (".jpg", ".jpeg", ".png")


class ImageTensorDataset(Dataset):
    """Images held as one tensor (uint8 0..255 or float 0..1, N×C×H×W) with int labels.

    Items are normalised float tensors ``(x - mean) / std``; with ``augment`` the
    image is first zero-padded by 4, randomly cropped back and flipped horizontally
    half the time (torch's global RNG, or the generator given to ``batch``).
    ``DataLoader`` reads whole batches through ``__getitems__``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float],
                 std: Sequence[float], augment: bool = False, classes: Sequence[str] = ()):
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"need N×C×H×W images and N labels, got {tuple(images.shape)} "
                             f"and {tuple(labels.shape)}")
        self.images, self.labels = images, labels.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.augment, self.classes = bool(augment), list(classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.batch(torch.tensor([i]))
        return x[0], int(y[0])

    def __getitems__(self, idx: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        """What ``DataLoader`` asks for one batch: a single batched read and augmentation
        instead of one per image (about 10x faster on CPU)."""
        x, y = self.batch(torch.as_tensor(list(idx), dtype=torch.long))
        return list(zip(x.unbind(0), y.tolist()))

    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (and, if ``augment``, augmented) images and labels at ``idx``."""
        x = self.images[idx]
        if self.augment:
            x = _pad_crop_flip(x, 4, generator)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        return (x - self.mean) / self.std, self.labels[idx]

    def subset(self, idx: torch.Tensor) -> ImageTensorDataset:
        """A new data set holding only the images at ``idx`` (same settings)."""
        return ImageTensorDataset(self.images[idx], self.labels[idx], self.mean.flatten().tolist(),
                                  self.std.flatten().tolist(), self.augment, self.classes)


def _pad_crop_flip(x: torch.Tensor, pad: int, g: torch.Generator | None) -> torch.Tensor:
    # One gather does crop and flip for the whole batch: no per-image python loop.
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b, 1), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (b, 1), generator=g)
    flip = torch.rand(b, 1, generator=g) < 0.5
    rows = oy + torch.arange(h)
    ar = torch.arange(w)
    cols = torch.where(flip, ox + (w - 1) - ar, ox + ar)
    bi = torch.arange(b).view(b, 1, 1, 1)
    ci = torch.arange(c).view(1, c, 1, 1)
    return xp[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


class TensorLoader:
    """Seeded batch iterator over an :class:`ImageTensorDataset`, augmenting per batch.

    Epoch ``e`` uses its own generator seeded from ``(seed, e)``; the epoch counter
    advances on each ``iter()``; call :meth:`set_epoch` when resuming.
    """

    def __init__(self, dataset: ImageTensorDataset, batch_size: int, shuffle: bool = False,
                 seed: int = 0, drop_last: bool = False):
        self.dataset, self.batch_size, self.shuffle = dataset, int(batch_size), shuffle
        self.seed, self.drop_last, self.epoch = seed, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n, b = len(self.dataset), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        n = len(self.dataset)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        for k in range(len(self)):
            yield self.dataset.batch(order[k * self.batch_size:(k + 1) * self.batch_size], g)


def loader(dataset: Dataset, batch_size: int = 128, shuffle: bool = False, seed: int = 0,
           drop_last: bool = False) -> TensorLoader | DataLoader:
    """Batches of ``dataset``: a fast :class:`TensorLoader` for our tensor data sets, else a
    single-process ``DataLoader`` whose shuffling is seeded with ``seed``."""
    if isinstance(dataset, ImageTensorDataset):
        return TensorLoader(dataset, batch_size, shuffle, seed, drop_last)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      generator=torch.Generator().manual_seed(seed), num_workers=0)


def balanced_indices(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` seeded indices, as equal per class as possible (extras go to random classes)."""
    classes = labels.unique(sorted=True)
    if not 0 < n <= len(labels):
        raise ValueError(f"subset must be in 1..{len(labels)}, got {n}")
    g = torch.Generator().manual_seed(seed)
    per = torch.full((len(classes),), n // len(classes), dtype=torch.long)
    per[torch.randperm(len(classes), generator=g)[: n % len(classes)]] += 1
    picks = []
    for c, k in zip(classes.tolist(), per.tolist()):
        pool = (labels == c).nonzero().flatten()
        if k > len(pool):
            raise ValueError(f"subset={n} needs {k} images of class {c}, only {len(pool)} exist")
        picks.append(pool[torch.randperm(len(pool), generator=g)[:k]])
    return torch.cat(picks).sort().values


# --------------------------------------------------------------------------- CIFAR-10 sources

def cache_dir() -> Path:
    """``$FXPRUNE_CACHE`` or ``~/.cache/fxprune`` (created on demand)."""
    d = Path(os.environ.get("FXPRUNE_CACHE") or Path.home() / ".cache" / "fxprune")
    d.mkdir(parents=True, exist_ok=True)
    return d


def find_cifar10() -> Path | None:
    """The default CIFAR-10 source: ``$FXPRUNE_CIFAR10``, else the shared tarball beside the
    repository (``../shared/data/cifar10-jpg.tar.gz`` from the repo root or the cwd)."""
    env = os.environ.get("FXPRUNE_CIFAR10")
    if env:
        return Path(env) if Path(env).exists() else None
    rel = Path("..") / "shared" / "data" / "cifar10-jpg.tar.gz"
    for base in (Path(__file__).resolve().parent.parent, Path.cwd()):
        if (base / rel).is_file():
            return (base / rel).resolve()
    return None


class _ArrayUnpickler(pickle.Unpickler):
    """Reads the CIFAR-10 python batches (dicts of bytes, lists and numpy arrays) and
    refuses every other global, so a crafted batch file cannot run code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise FxPruneError(f"CIFAR batch file refers to {module}.{name}; only numpy arrays "
                               "are read from it (is it a genuine cifar-10-batches-py file?)")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as fh:
        return _ArrayUnpickler(fh, encoding="bytes").load()


def _read_pickles(d: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    data, labels = [], []
    for name in names:
        entry = _unpickle(d / name)
        data.append(np.asarray(entry[b"data"], dtype=np.uint8))
        labels += list(entry[b"labels"])
    classes = [str(i) for i in range(10)]
    if (d / "batches.meta").exists():
        classes = [c.decode() for c in _unpickle(d / "batches.meta")[b"label_names"]]
    images = torch.from_numpy(np.concatenate(data)).reshape(-1, 3, 32, 32)
    return images, torch.tensor(labels), classes


def _iter_encoded(src: Path) -> Iterator[tuple[str, str, str, bytes]]:
    """(split, class, file name, encoded bytes) for every image in a tarball or folder."""
    if src.is_file():
        with tarfile.open(src, "r:*") as tf:
            for m in tf:
                parts = m.name.split("/")
                if m.isfile() and len(parts) >= 3 and parts[-1].lower().endswith(_IMG_EXT) \
                        and parts[-3] in _SPLITS:
                    yield parts[-3], parts[-2], parts[-1], tf.extractfile(m).read()
        return
    base = src / "cifar10" if (src / "cifar10").is_dir() else src
    for split in _SPLITS:
        for f in sorted((base / split).glob("*/*")):
            if f.suffix.lower() in _IMG_EXT:
                yield split, f.parent.name, f.name, f.read_bytes()


def _decode_all(src: Path) -> dict[str, dict]:
    """Decode every image of ``src`` into per-split uint8 tensors, with a progress bar."""
    from PIL import Image  # torchvision.io decoding is deprecated; PIL gives the same pixels
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(f"reading {src.name}", total=None)
        entries = []
        for e in _iter_encoded(src):
            entries.append(e)
            bar.advance(task)
        if not entries:
            raise FileNotFoundError(f"no images under {src} in {{train,test}}/<class>/ layout")
        entries.sort(key=lambda e: e[:3])  # deterministic order, whatever the archive order
        classes = sorted({e[1] for e in entries})
        out = {s: {"images": [], "labels": [], "classes": classes} for s in _SPLITS}
        task = bar.add_task("decoding CIFAR-10 images (once)", total=len(entries))
        for split, cls, _, raw in entries:
            with Image.open(io.BytesIO(raw)) as im:
                out[split]["images"].append(np.asarray(im.convert("RGB")))
            out[split]["labels"].append(classes.index(cls))
            bar.advance(task)
    for d in out.values():
        hwc = np.stack(d["images"]) if d["images"] else np.zeros((0, 32, 32, 3), np.uint8)
        d["images"] = torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous()
        d["labels"] = torch.tensor(d["labels"], dtype=torch.long)
    return out


def _atomic_save(obj: object, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _source_key(src: Path) -> str:
    """Changes when the tarball, or any class folder of an image folder, changes."""
    if src.is_file():
        stats = [src]
    else:
        base = src / "cifar10" if (src / "cifar10").is_dir() else src
        stats = sorted(p for s in _SPLITS for p in (base / s).glob("*") if p.is_dir())
    sig = [f"{p.resolve()}|{p.stat().st_size}|{p.stat().st_mtime_ns}" for p in stats]
    return hashlib.sha1("\n".join(sig).encode()).hexdigest()[:12]


def _load_encoded(src: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    key = _source_key(src)
    stem = src.name.split(".")[0]
    paths = {s: cache_dir() / f"{stem}-{key}-{s}.pt" for s in _SPLITS}
    if not paths[split].exists():
        for s, d in _decode_all(src).items():  # one pass over the archive caches both splits
            _atomic_save(d, paths[s])
    with open(paths[split], "rb") as fh:
        d = torch.load(io.BytesIO(fh.read()), weights_only=True)
    return d["images"], d["labels"], list(d["classes"])


def cifar10(root: str | os.PathLike | None = None, train: bool = True, subset: int | None = None,
            seed: int = 0, augment: bool | None = None) -> ImageTensorDataset:
    """CIFAR-10 as an :class:`ImageTensorDataset` of normalised 3×32×32 images.

    ``root``: a ``cifar-10-batches-py`` folder (or its parent), an image folder, or a
    tarball of one; ``None`` uses :func:`find_cifar10`. ``augment`` defaults to ``train``.
    ``subset=N`` keeps a class-balanced subset of N images chosen with ``seed``.
    """
    src = Path(root) if root is not None else find_cifar10()
    if src is None or not src.exists():
        raise FileNotFoundError(
            f"CIFAR-10 not found (root={root!r}); set FXPRUNE_CIFAR10 or pass root= pointing "
            "at cifar10-jpg.tar.gz, an image folder or cifar-10-batches-py")
    split = "train" if train else "test"
    batches = src / "cifar-10-batches-py" if (src / "cifar-10-batches-py").is_dir() else src
    if (batches / "test_batch").exists():
        images, labels, classes = _read_pickles(batches, split)
    else:
        images, labels, classes = _load_encoded(src, split)
    ds = ImageTensorDataset(images, labels, CIFAR10_MEAN, CIFAR10_STD,
                            train if augment is None else augment, classes)
    return ds if subset is None else ds.subset(balanced_indices(labels, subset, seed))


def digits(train: bool = True, seed: int = 0, size: int = 32) -> ImageTensorDataset:
    """scikit-learn's 1797 8×8 digits, bilinearly upsampled to 1×``size``×``size``.

    A stratified 80/20 train/test split fixed by ``seed``; normalised with the mean and
    std of the training split. No augmentation (flips would change digits).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y,
                                           random_state=seed)
    images = torch.from_numpy(x).float().view(-1, 1, 8, 8) / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    tr = torch.from_numpy(idx_train)
    mean, std = images[tr].mean().item(), images[tr].std().item()
    idx = tr if train else torch.from_numpy(idx_test)
    return ImageTensorDataset(images[idx].contiguous(), torch.from_numpy(y)[idx], [mean], [std],
                              False, [str(i) for i in range(10)])
