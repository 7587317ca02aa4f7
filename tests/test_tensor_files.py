"""tensor_files: state dicts and records as safetensors, without pickle. Ties and views
are stored once / copied and come back by name; records keep int keys, tuples and
tensors; a changed byte is a ChecksumError; a damaged file a WeightsFileError."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fxprune.file_errors import ChecksumError, WeightsFileError
from fxprune.tensor_files import read_state_dict, read_tree, write_state_dict, write_tree


def _run_and_check(tmp_path, state):
    write_state_dict(tmp_path / "w.safetensors", state)
    back = read_state_dict(tmp_path / "w.safetensors")
    assert list(sorted(back)) == sorted(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    return back


def test_ties_views_and_dtypes(tmp_path):
    shared = torch.randn(5, 4)
    base = torch.arange(10.0)
    state = {"emb.weight": shared, "out.weight": shared, "half": torch.ones(3).half(),
             "bf": torch.ones(2, dtype=torch.bfloat16), "flags": torch.tensor([True, False]),
             "scalar": torch.tensor(3), "empty": torch.zeros(0), "empty2": torch.zeros(0),
             "first": base[:5], "second": base[5:], "strided": torch.randn(4, 4).t()}
    back = _run_and_check(tmp_path, state)
    assert back["emb.weight"] is back["out.weight"]


def test_module_with_tied_parameter(tmp_path):
    m = nn.Sequential(nn.Embedding(6, 3), nn.Linear(3, 6, bias=False))
    m[1].weight = m[0].weight
    _run_and_check(tmp_path, m.state_dict())


def test_record_round_trip_with_optimizer(tmp_path):
    net = nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), betas=(0.5, 0.999))
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    record = {"epoch": 2, "opts": [opt.state_dict()], "history": [{"loss": 1.5, "t": [[0, 0.1]]}],
              "none": None, "pair": (1, "a")}
    write_tree(tmp_path / "r.safetensors", record)
    back = read_tree(tmp_path / "r.safetensors")
    assert back["opts"][0]["param_groups"] == opt.state_dict()["param_groups"]
    assert list(back["opts"][0]["state"]) == [0, 1]  # int keys survive
    assert back["pair"] == (1, "a") and back["history"] == record["history"]
    opt.load_state_dict(back["opts"][0])


def test_record_checksum_and_damage(tmp_path):
    path = tmp_path / "r.safetensors"
    write_tree(path, {"w": torch.full((32,), 2.5)})
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="r.safetensors is damaged"):
        read_tree(path)
    path.write_bytes(b"")
    with pytest.raises(WeightsFileError, match="r.safetensors"):
        read_tree(path)
    write_state_dict(path, {"w": torch.ones(2)})
    with pytest.raises(WeightsFileError, match="not an fxprune record"):
        read_tree(path)


def test_only_plain_values_are_stored(tmp_path):
    with pytest.raises(TypeError, match="function"):
        write_tree(tmp_path / "r.safetensors", {"f": lambda: 0})
    with pytest.raises(TypeError, match="not a tensor"):
        write_state_dict(tmp_path / "w.safetensors", {"x": 3})
