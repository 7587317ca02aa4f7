"""Saving and loading pruned models: replay equality, plan mismatch, atomic writes."""
from __future__ import annotations

import json

import pytest
import torch
from tiny_models import tiny, tiny_kernel1, tiny_other

import fxprune
from fxprune import io
from fxprune.errors import FxPruneError, PlanMismatchError

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def result():
    res = fxprune.prune(tiny(), (X,), ratio=0.5)
    with torch.no_grad():  # weights that differ from a fresh model's, as after fine-tuning
        for p in res.module.parameters():
            p.add_(0.01)
    return res


def _snapshot(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def _run_and_check(tmp_path, result, **save_kw):
    """Save, load with the factory from meta.json, compare outputs and weights."""
    path = io.save(tmp_path / "m", result, example_inputs=(X,), factory="tiny_models:tiny",
                   **save_kw)
    loaded = io.load(path, trust_factory=True)  # tiny_models:tiny is not a registry model
    ref = result.module.eval()
    torch.testing.assert_close(loaded.module(X), ref(X), rtol=0, atol=0)
    for (k, a), (k2, b) in zip(loaded.module.state_dict().items(), ref.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert loaded.plan == result.plan
    return path


def test_save_load_replay_is_exact(tmp_path, result):
    path = _run_and_check(tmp_path, result)
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "meta.json",
                                                      "model.safetensors", "plan.json"]
    meta = io.read_meta(path)
    assert meta["model_factory"] == "tiny_models:tiny" and meta["input_shapes"] == [[2, 3, 16, 16]]
    assert meta["torch_version"] == torch.__version__ and meta["params"] > 0
    # tensors only, no pickle: a plain safetensors file
    from safetensors.torch import load_file

    assert set(load_file(path / "model.safetensors")) == set(result.module.state_dict())


def test_save_with_onnx_and_pt2(tmp_path, result):
    pytest.importorskip("onnxruntime")
    from fxprune.export import check_onnx

    path = _run_and_check(tmp_path, result, onnx=True, pt2=True)
    assert check_onnx(result.module, (X,), path / "model.onnx") < 1e-4
    prog = torch.export.load(str(path / "model.pt2"))
    torch.testing.assert_close(prog.module()(X), result.module(X))


def test_load_with_explicit_factory_and_inputs(tmp_path, result):
    path = io.save(tmp_path / "m", result)
    loaded = io.load(path, tiny, example_inputs=(X,))
    torch.testing.assert_close(loaded.module(X), result.module.eval()(X))
    with pytest.raises(FxPruneError, match="no model factory"):
        io.load(path)


def test_other_architecture_raises_plan_mismatch(tmp_path, result):
    path = io.save(tmp_path / "m", result, example_inputs=(X,))
    with pytest.raises(PlanMismatchError, match=r"node \d+ differs[\s\S]*act"):
        io.load(path, tiny_other)
    # same graph, other kernel size: the signature records module settings
    with pytest.raises(PlanMismatchError, match=r"node \d+ differs[\s\S]*conv2[\s\S]*kernel_size"):
        io.load(path, tiny_kernel1)


def test_interrupted_save_keeps_previous_save_intact(tmp_path, result, monkeypatch):
    path = io.save(tmp_path / "m", result, example_inputs=(X,), factory="tiny_models:tiny")
    before = _snapshot(path)

    def write_dies_midway(f, *a, **kw):
        with open(f, "wb") as fh:
            fh.write(b"half a state dict")
        raise OSError("disk full")

    monkeypatch.setattr(io, "write_state_dict", write_dies_midway)
    with torch.no_grad():
        other = fxprune.prune(tiny(), (X,), ratio=0.25)
    with pytest.raises(OSError, match="disk full"):
        io.save(path, other, example_inputs=(X,))
    monkeypatch.undo()
    assert _snapshot(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"], "no staging dir or part file left"
    io.load(path, trust_factory=True)  # still loads


def test_save_replaces_previous_save(tmp_path, result):
    path = io.save(tmp_path / "m", result, example_inputs=(X,), factory="tiny_models:tiny")
    smaller = fxprune.prune(tiny(), (X,), ratio=0.75)
    io.save(path, smaller, example_inputs=(X,), factory="tiny_models:tiny")
    assert json.loads((path / "plan.json").read_text())["settings"]["ratio"] == 0.75
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_refuses_to_overwrite_a_foreign_directory(tmp_path, result):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "thesis.tex").write_text("precious")
    with pytest.raises(FxPruneError, match="refusing"):
        io.save(tmp_path / "m", result)
    assert (tmp_path / "m" / "thesis.tex").read_text() == "precious"


def test_atomic_path_cleans_up_on_error(tmp_path):
    with pytest.raises(RuntimeError), io.atomic_path(tmp_path / "f.txt") as tmp:
        tmp.write_text("partial")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []
    with io.atomic_path(tmp_path / "f.txt") as tmp:
        tmp.write_text("done")
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


@pytest.mark.parametrize("spec, cls", [
    ("resnet18", "ResNet"), ("cifar:resnet20(num_classes=10, in_channels=1)", "CifarResNet"),
    ("tiny_models:tiny(width=4)", "TinyNet"), ("torchvision:mobilenet_v2", "MobileNetV2"),
])
def test_resolve_factory(spec, cls):
    assert type(io.resolve_factory(spec)()).__name__ == cls


@pytest.mark.parametrize("spec, msg", [
    ("resnet81", "did you mean resnet18"), ("cifar:resnet7", "unknown cifar model"),
    ("tiny_models:nope", "cannot import"), ("resnet18(3)", "keyword=literal"),
])
def test_resolve_factory_errors(spec, msg):
    with pytest.raises(io.SpecError, match=msg):
        io.resolve_factory(spec)


# --- damaged and invalid files: named errors that name the file and the fix -----------------
from fxprune import savedir  # noqa: E402
from fxprune.file_errors import (  # noqa: E402
    ChecksumError,
    CorruptFileError,
    MetaFileError,
    PlanFileError,
    WeightsFileError,
)


def _rewrite(path, name, data: bytes, rehash: bool = True):
    """Replace one file of a save; ``rehash`` updates the manifest so the parser is reached."""
    (path / name).write_bytes(data)
    if rehash:
        savedir.write_manifest(path, list(savedir.read_manifest(path)))


def _meta_with(path, **changes) -> bytes:
    meta = json.loads((path / "meta.json").read_text())
    meta.update(changes)
    return json.dumps({k: v for k, v in meta.items() if v is not None}).encode()


@pytest.fixture
def saved(tmp_path, result):
    return io.save(tmp_path / "m", result, example_inputs=(X,), factory="tiny_models:tiny")


@pytest.mark.parametrize("name", ["plan.json", "meta.json", "model.safetensors"])
def test_flipped_bit_is_a_checksum_error_naming_the_file(saved, name):
    data = bytearray((saved / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    _rewrite(saved, name, bytes(data), rehash=False)
    with pytest.raises(ChecksumError, match="sha256") as e:
        io.load(saved, tiny)
    assert str(e.value).startswith(f"{saved / name} is damaged")


def _plan_cases(saved):
    text = (saved / "plan.json").read_text()
    d = json.loads(text)
    return {
        "truncated": (text[: len(text) // 2].encode(), "truncated"),
        "empty": (b"", "empty"),
        "binary": (bytes(range(256)) * 4, "not text"),
        "no removed": (json.dumps({k: v for k, v in d.items() if k != "removed"}).encode(),
                       "no removed"),
        "version abc": (json.dumps({**d, "version": "abc"}).encode(), "version"),
        "dup units": (json.dumps({**d, "removed": {"conv2.weight:0": [3] * 4}}).encode(),
                      "more than once"),
    }


@pytest.mark.parametrize("case", ["truncated", "empty", "binary", "no removed", "version abc",
                                  "dup units"])
def test_bad_plan_json(saved, case):
    data, msg = _plan_cases(saved)[case]
    _rewrite(saved, "plan.json", data)
    with pytest.raises(PlanFileError) as e:
        io.load(saved, tiny)
    where, _, what = str(e.value).partition(str(saved / "plan.json"))
    assert where == "" and msg in what and "restore it" in what, str(e.value)


@pytest.mark.parametrize("changes, msg", [
    ({"input_shapes": None}, "no input_shapes"),
    ({"input_dtypes": ["float33"]}, "float33"),
    ({"input_dtypes": ["load"]}, "load"),  # getattr(torch, d) would find torch.load
    ({"input_shapes": [[1, 3, -16, 16]]}, "positive ints"),
    ({"input_shapes": [[10**6, 10**6]]}, "elements"),
    ({"format": "fxprune-save/9"}, "format"),
])
def test_bad_meta_json(saved, changes, msg):
    _rewrite(saved, "meta.json", _meta_with(saved, **changes))
    with pytest.raises(MetaFileError) as e:
        io.load(saved, tiny)
    _, _, what = str(e.value).partition(str(saved / "meta.json"))
    assert msg in what, str(e.value)


def test_meta_json_not_json(saved):
    _rewrite(saved, "meta.json", b"\x00\xff garbage")
    with pytest.raises(MetaFileError, match="meta.json: is not valid JSON"):
        io.load(saved, tiny)


@pytest.mark.parametrize("cut", [0, 7, 100, -10])
def test_bad_weights_file(saved, cut):
    data = (saved / "model.safetensors").read_bytes()
    _rewrite(saved, "model.safetensors", data[:cut])
    with pytest.raises(WeightsFileError, match="model.safetensors.*save the model again"):
        io.load(saved, tiny)


@pytest.mark.parametrize("cut", [0, 50, -20])
def test_bad_first_format_weights_file(tmp_path, result, cut):
    d = tmp_path / "old"
    d.mkdir()
    (d / "plan.json").write_text(result.plan.to_json())
    torch.save(result.module.state_dict(), d / "state_dict.pt")
    (d / "state_dict.pt").write_bytes((d / "state_dict.pt").read_bytes()[:cut])
    (d / "meta.json").write_text(json.dumps({
        "format": "fxprune-save/1", "model_factory": None, "input_shapes": [[2, 3, 16, 16]],
        "input_dtypes": ["float32"], "files": ["plan.json", "state_dict.pt", "meta.json"]}))
    with pytest.raises(WeightsFileError, match="state_dict.pt") as e:
        io.load(d, tiny)
    assert isinstance(e.value, CorruptFileError)


def test_missing_file_is_named(saved):
    (saved / "plan.json").unlink()
    with pytest.raises(MetaFileError, match="plan.json is missing"):
        io.load(saved, tiny)


def test_not_a_save(tmp_path):
    with pytest.raises(MetaFileError, match="not an fxprune save"):
        io.load(tmp_path, tiny)


def test_tied_weights_are_stored_once_and_restored(tmp_path):
    """An embedding and an output layer holding one Parameter: safetensors refuses shared
    storage, so the file holds it once and both names come back."""
    from types import SimpleNamespace

    from safetensors import safe_open

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)
            self.out = torch.nn.Linear(4, 10, bias=False)
            self.out.weight = self.emb.weight

    m = Tied()
    plan = fxprune.PruningPlan(removed={}, group_sizes={})
    d = io.save(tmp_path / "t", SimpleNamespace(module=m, plan=plan))
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        assert len(list(f.keys())) == 1
    from fxprune.tensor_files import read_state_dict

    state = read_state_dict(d / "model.safetensors")
    assert set(state) == {"emb.weight", "out.weight"}
    assert torch.equal(state["out.weight"], m.emb.weight.detach())
    fresh = Tied()
    fresh.load_state_dict(state, strict=True)
    assert fresh.out.weight is fresh.emb.weight and torch.equal(fresh.out.weight, m.out.weight)


def test_top_level_save_and_load(tmp_path, result):
    assert {"save", "load"} <= set(fxprune.__all__)
    d = fxprune.save(tmp_path / "m", result, example_inputs=(X,))
    torch.testing.assert_close(fxprune.load(d, tiny).module(X), result.module.eval()(X))
