"""The ``fxprune`` command line, run as a subprocess on a tiny model
(``tiny_models:tiny``): exit codes, output, files written, one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fxprune import cli, io
from fxprune.errors import FxPruneError

ROOT = Path(__file__).resolve().parent.parent
TINY = ["tiny_models:tiny", "--input-shape", "1,3,16,16"]


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
           "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "fxprune.cli", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


def _run_and_check(*args: str, code: int = 0,
                   cwd: Path | None = None) -> subprocess.CompletedProcess:
    p = _run(*args, cwd=cwd)
    assert p.returncode == code, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    assert "Traceback" not in p.stderr
    return p


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("cli") / "tiny-pruned"
    return out, _run_and_check("prune", *TINY, "--ratio", "0.5", "--out", str(out))


def test_prune_writes_plan_weights_onnx_and_prints_counts(pruned_dir):
    out, p = pruned_dir
    assert {f.name for f in out.iterdir()} == {"plan.json", "model.safetensors", "meta.json",
                                               "model.onnx", "manifest.json"}
    assert "original" in p.stdout and "pruned" in p.stdout and "MACs" in p.stdout
    assert "verified" in p.stdout
    meta = io.read_meta(out)
    assert meta["model_factory"] == "tiny_models:tiny" and meta["input_shapes"] == [[1, 3, 16, 16]]
    res = io.load(out, trust_factory=True)  # replays the plan on tiny_models.tiny()
    assert sum(p.numel() for p in res.module.parameters()) == meta["params"]
    assert json.loads((out / "plan.json").read_text())["settings"]["ratio"] == 0.5


def test_bench_saved_dir_reports_speedup(pruned_dir, tmp_path):
    out, _ = pruned_dir
    js = tmp_path / "bench.json"
    p = _run_and_check("bench", str(out), "--trust-factory", "--backend", "torch-cpu",
                       "--batch", "1", "2",
                       "--warmup", "1", "--repeats", "3", "--json", str(js))
    assert "speed-up" in p.stdout and "torch-cpu" in p.stdout
    rows = json.loads(js.read_text())["rows"]
    assert [(r["backend"], r["batch_size"]) for r in rows] == [("torch-cpu", 1), ("torch-cpu", 2)]
    assert all(r["speedup"] > 0 for r in rows)


def test_bad_ratio_is_a_one_line_usage_error(tmp_path):
    p = _run_and_check("prune", *TINY, "--ratio", "1.5", "--out", str(tmp_path / "x"), code=2)
    assert p.stderr.strip().count("\n") == 0, p.stderr
    assert "--ratio" in p.stderr and "[0, 1)" in p.stderr and p.stdout == ""
    assert not (tmp_path / "x").exists()


def test_runtime_error_exit_1_and_debug_traceback(tmp_path):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "a.txt").write_text("keep me")
    p = _run_and_check("prune", *TINY, "--ratio", "0.5", "--no-onnx",
                       "--out", str(foreign), code=1)
    assert "refusing to overwrite" in p.stderr and (foreign / "a.txt").read_text() == "keep me"
    with pytest.raises(FxPruneError, match="refusing"):  # --debug: the exception propagates
        cli.main(["--debug", "prune", *TINY, "--ratio", "0.5", "--out", str(foreign)])


# In-process: argument handling is the same code, without a Python start-up per case.
def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert all(c in text for c in ("inspect", "prune", "bench", "demo"))


def test_inspect_prints_groups_and_counts(capsys):
    assert cli.main(["inspect", *TINY]) == 0
    text = capsys.readouterr().out
    assert "prunable groups" in text and "frozen groups" in text and "MACs" in text


@pytest.mark.parametrize("argv, needle", [
    (["prune", "resnet81", "--ratio", "0.5", "--out", "x"], "did you mean resnet18"),
    (["prune", *TINY, "--ratio", "0.5", "--ignore", "nosuch", "--out", "x"], "no submodule"),
    (["bench", *TINY, "--backend", "tpu"], "unknown"),
])
def test_usage_errors_exit_2(capsys, argv, needle):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["prune", *TINY, "--ratio", "0.5", "--target-macs", "0.5",
                                   "--out", "x"],  # mutually exclusive
                                  ["prune", *TINY, "--ratio", "abc", "--out", "x"],
                                  ["bench", *TINY, "--batch", "0"], ["frobnicate"]])
def test_argparse_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_target_macs(tmp_path, capsys):
    out = tmp_path / "t"
    assert cli.main(["prune", *TINY, "--target-macs", "0.5", "--no-onnx", "--out", str(out)]) == 0
    x = (torch.randn(1, 3, 16, 16),)
    import fxprune

    res = io.load(out, trust_factory=True)
    base = fxprune.count(io.resolve_factory("tiny_models:tiny")(), x).macs
    assert fxprune.count(res.module, x).macs <= 0.52 * base


@pytest.mark.slow
def test_demo_quick(tmp_path):
    p = _run_and_check("demo", "--quick", "--out", str(tmp_path / "d"))
    assert "pruned + fine-tuned" in p.stdout
    assert (tmp_path / "d" / "demo.png").stat().st_size > 0
    assert (tmp_path / "d" / "pruned" / "plan.json").is_file()


def test_criterion_options_and_calibration_are_parsed():
    assert cli._option("preset=resnet56-a") == ("preset", "resnet56-a")
    assert cli._option("percent=0.4") == ("percent", 0.4)
    assert cli._option("num_batches=3") == ("num_batches", 3)
    with pytest.raises(Exception, match="KEY=VALUE"):
        cli._option("nonsense")
    x = torch.randn(2, 3, 8, 8)
    batches = cli._calibration("random:3", (x,))
    assert len(batches) == 3 and all(b.shape == x.shape for b in batches)
    assert not torch.equal(batches[0], batches[1])
    with pytest.raises(cli.UsageError, match="unknown data"):
        cli._calibration("imagenet:2", x)
