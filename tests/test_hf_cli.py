"""``fxprune prune hf:DIR``: a local checkpoint in, a plain HF checkpoint out; hub ids and
missing directories are one-line errors that say what to do."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

import hf_models  # noqa: E402

from fxprune.cli import main  # noqa: E402


def _saved_llama(tmp_path):
    wrapped, (ids,), _ = hf_models.build("llama")
    wrapped.model.save_pretrained(tmp_path / "src")
    return tmp_path / "src", wrapped.model, ids


@pytest.mark.parametrize("extra", [[], ["--criterion", "activation", "--calibration", "random:2"]])
def test_prune_local_dir_writes_hf_checkpoint(tmp_path, capsys, extra):
    import transformers

    src, model, ids = _saved_llama(tmp_path)
    out = tmp_path / "out"
    rc = main(["prune", f"hf:{src}", "--ratio", "0.5", "--out", str(out), *extra])
    assert rc == 0, capsys.readouterr().err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_key_value_heads"] == 1 and cfg["intermediate_size"] == 64
    assert (out / "model.safetensors").is_file()
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert back(input_ids=ids).logits.shape == model(input_ids=ids).logits.shape
    assert "HF checkpoint" in capsys.readouterr().out


@pytest.mark.parametrize("spec, words", [("hf:meta-llama/Llama-2-7b-hf", "hub id"),
                                         ("hf:/no/such/dir/x", "not a directory")])
def test_non_local_specs_are_named_errors(tmp_path, capsys, spec, words):
    rc = main(["prune", spec, "--ratio", "0.3", "--out", str(tmp_path / "o")])
    assert rc == 1
    msg = capsys.readouterr().err
    assert words in msg and spec in msg and not (tmp_path / "o").exists()
