"""Training checkpoints carry their own sha256: a flipped bit, a truncated or an empty
file is a named error on resume, naming the file; files without a checksum (older
runs) still load."""
from __future__ import annotations

import struct

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from fxprune.file_errors import ChecksumError, WeightsFileError
from fxprune.train import TrainConfig, train
from fxprune.train.checkpoint import (
    CHECKPOINT_NAME,
    CHECKSUM_KEY,
    atomic_save,
    load_checkpoint,
    load_rewind_weights,
    save_rewind_weights,
)

VALUE = 1.2345


def _record() -> dict:
    return {"epoch": 3, "model": {"w": torch.full((64,), VALUE)}, "history": [{"loss": 0.5}]}


def _flip_a_weight_bit(path) -> None:
    data = bytearray(path.read_bytes())
    at = data.find(struct.pack("<f", VALUE) * 64)
    assert at >= 0, "tensor bytes not found (torch stores records uncompressed)"
    data[at + 1] ^= 0x01
    path.write_bytes(bytes(data))


def test_round_trip_and_checksum_key(tmp_path):
    atomic_save(_record(), tmp_path / CHECKPOINT_NAME)
    assert CHECKSUM_KEY in torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    back = load_checkpoint(tmp_path)
    assert CHECKSUM_KEY not in back and torch.equal(back["model"]["w"], _record()["model"]["w"])


def test_flipped_bit_is_caught_on_resume(tmp_path):
    atomic_save(_record(), tmp_path / CHECKPOINT_NAME)
    _flip_a_weight_bit(tmp_path / CHECKPOINT_NAME)
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)  # torch alone: silent
    with pytest.raises(ChecksumError, match=rf"{CHECKPOINT_NAME} is damaged.*Delete it"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("cut", [0, 30, -30])
def test_truncated_checkpoint(tmp_path, cut):
    atomic_save(_record(), tmp_path / CHECKPOINT_NAME)
    path = tmp_path / CHECKPOINT_NAME
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(WeightsFileError, match=rf"{CHECKPOINT_NAME}.*Delete it"):
        load_checkpoint(tmp_path)


def test_checkpoint_without_checksum_still_loads(tmp_path):
    torch.save(_record(), tmp_path / CHECKPOINT_NAME)
    assert load_checkpoint(tmp_path)["epoch"] == 3


def test_rewind_weights_are_checked(tmp_path):
    save_rewind_weights(tmp_path, 2, {"w": torch.full((64,), VALUE)})
    assert set(load_rewind_weights(tmp_path, 2)) == {"w"}
    _flip_a_weight_bit(tmp_path / "weights" / "epoch_0002.pt")
    with pytest.raises(ChecksumError, match="epoch_0002.pt"):
        load_rewind_weights(tmp_path, 2)


def test_train_refuses_to_resume_a_damaged_checkpoint(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 4, generator=g), torch.randint(0, 2, (16,), generator=g))
    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=8, device="cpu", progress=False,
                      out_dir=tmp_path)
    train(nn.Linear(4, 2), data, None, cfg)
    path = tmp_path / CHECKPOINT_NAME
    ck = torch.load(path, weights_only=True)
    ck["epoch"] = ck.get("epoch", 0) + 1  # a changed value under the old checksum
    torch.save(ck, path)
    with pytest.raises(ChecksumError, match=CHECKPOINT_NAME):
        train(nn.Linear(4, 2), data, None, cfg.replace(epochs=2), resume=True)
