"""The CLI on damaged or crafted save directories: one-line errors that name the file
(never "internal error ... an fxprune bug?"), exit code 1, and no code run from
meta.json unless --trust-factory."""
from __future__ import annotations

import json

import pytest
import torch
from tiny_models import tiny

import fxprune
from fxprune import cli, savedir

X = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def result():
    return fxprune.prune(tiny(), (X,), ratio=0.5)


@pytest.fixture
def saved(tmp_path, result):
    return fxprune.save(tmp_path / "m", result, example_inputs=(X,), factory="tiny_models:tiny")


def _rewrite(path, name, data: bytes, rehash: bool = True) -> None:
    (path / name).write_bytes(data)
    if rehash:
        savedir.write_manifest(path, list(savedir.read_manifest(path)))


def _run_and_check(capsys, argv, code: int, *needles: str) -> str:
    assert cli.main(argv) == code
    err = capsys.readouterr().err.strip()
    if code:
        assert err.count("\n") == 0, err
        assert "internal error" not in err and "fxprune bug" not in err, err
        assert err.startswith(f"fxprune {argv[0]}: error: "), err
    for n in needles:
        assert n in err, err
    return err


def _meta_without_shapes(path) -> bytes:
    meta = json.loads((path / "meta.json").read_text())
    del meta["input_shapes"]
    return json.dumps(meta).encode()


@pytest.mark.parametrize("damage, needles", [
    (lambda d: _rewrite(d, "plan.json", b""), ["plan.json is empty"]),
    (lambda d: _rewrite(d, "plan.json", b"\xff\xfe\x00garbage"), ["plan.json is not text"]),
    (lambda d: _rewrite(d, "model.safetensors", (d / "model.safetensors").read_bytes()[:9]),
     ["model.safetensors", "save the model again"]),
    (lambda d: _rewrite(d, "model.safetensors", b"x" * 64, rehash=False),
     ["model.safetensors is damaged", "sha256"]),
    (lambda d: _rewrite(d, "meta.json", _meta_without_shapes(d)), ["meta.json", "input_shapes"]),
], ids=["empty-plan", "binary-plan", "truncated-weights", "flipped-weights", "meta-no-shapes"])
@pytest.mark.parametrize("command", ["inspect", "bench"])
def test_damaged_save_is_a_named_error(capsys, saved, damage, needles, command):
    damage(saved)
    extra = ["--trust-factory"] + (["--backend", "torch-cpu", "--batch", "1", "--repeats", "1",
                                    "--warmup", "0"] if command == "bench" else [])
    _run_and_check(capsys, [command, str(saved), *extra], 1, *needles)


@pytest.mark.parametrize("command", ["inspect", "bench"])
def test_saved_dir_cannot_run_its_factory(capsys, saved, tmp_path, command):
    marker = tmp_path / "marker"
    meta = json.loads((saved / "meta.json").read_text())
    meta["model_factory"] = f"subprocess:run(args=['touch', {str(marker)!r}])"
    _rewrite(saved, "meta.json", json.dumps(meta).encode())
    _run_and_check(capsys, [command, str(saved)], 1, "subprocess:run", "--trust-factory")
    assert not marker.exists()


def test_trust_factory_loads_a_trusted_dir(capsys, saved):
    with pytest.raises(AssertionError):  # refused without the flag
        _run_and_check(capsys, ["inspect", str(saved)], 0)
    assert cli.main(["inspect", str(saved), "--trust-factory"]) == 0
    assert "prunable groups" in capsys.readouterr().out


def test_prune_refuses_to_overwrite_user_files(capsys, saved, tmp_path):
    (saved / "results.csv").write_text("mine")
    _run_and_check(capsys, ["prune", "tiny_models:tiny", "--input-shape", "1,3,16,16",
                            "--no-onnx", "--out", str(saved)], 1,
                   "results.csv", "refusing")
    assert (saved / "results.csv").read_text() == "mine"
