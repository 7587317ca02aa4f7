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
