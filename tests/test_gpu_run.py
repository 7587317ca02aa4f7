"""Tests for the prepared GPU run (bench/gpu_run.py, bench/gpu/).

The whole run is exercised by its ``--dry-run`` (CPU, tiny models, a few hundred CIFAR-10
images, or synthetic ones where the tarball is absent; about 20 s) in a subprocess, once
per module: the JSON must have every stage, plausible numbers (latencies > 0, pruned
MACs below the original's, accuracies in [0, 1]) and a reason on every skipped row; the
report must carry its sections and plot. The pieces whose CUDA behaviour cannot run here
are checked on the CPU against references: the device augmentation, the epoch planner,
the CIFAR tarball reader, the target verdicts and the watchdog.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))

from gpu import report as R  # noqa: E402
from gpu.data import pad_crop_flip, read_cifar10  # noqa: E402
from gpu.train import TrainSettings, plan_epochs  # noqa: E402


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}


@pytest.fixture(scope="module")
def dry(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("gpu_dry")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_run.py"), str(out),
                           # a budget far above the dry run's ~15 s, so a loaded CI
                           # machine does not cut stages short (the cut is tested apart)
                           "--dry-run", "--budget", "240"], capture_output=True, text=True,
                          timeout=330,
                          env=_env(), cwd=ROOT)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((out / "results.json").read_text())
    doc["_test_wall_s"] = wall
    doc["_stdout"] = proc.stdout
    return out, doc


def test_dry_run_finishes_every_stage_within_its_budget(dry):
    _, doc = dry
    assert doc["dry_run"] is True and doc["status"] == "done"
    assert {k: v["status"] for k, v in doc["stages"].items()} == \
        {"latency": "done", "compile": "done", "train": "done"}
    assert doc["wall_s"] < doc["budget_s"]
    assert doc["env"]["torch"] == torch.__version__
    assert "TensorRT" in doc["env"]["tensorrt"] and "onnxruntime" in doc["env"]["onnxruntime_cuda"]
    assert "target (ResNets fp16 CUDA graphs batch 64" in doc["_stdout"]
    assert "target (training ordering)" in doc["_stdout"]


def test_dry_run_latency_rows_are_plausible(dry):
    _, doc = dry
    lat = doc["latency"]
    assert [m["model"] for m in lat["models"]] == ["resnet18", "vit_tiny"]
    for m in lat["models"]:
        orig, *pruned = m["variants"]
        assert orig["name"] == "original" and len(pruned) == 4
        for v in pruned:
            assert 0 < v["macs"] < orig["macs"] and 0 < v["params"] < orig["params"]
    measured = [r for r in lat["rows"] if not r["skipped"] and not r["error"]]
    assert {(r["backend"], r["mode"]) for r in measured} == \
        {("torch-cpu", "eager"), ("torch-compile", "compile"), ("onnxruntime", "runtime")}
    for r in measured:
        base = r["variants"]["original"]["median_ms"]
        for name, v in r["variants"].items():
            assert v["median_ms"] > 0 and v["repeats"] >= 1
            assert v["speedup"] == pytest.approx(base / v["median_ms"])
            assert v["efficiency"] == pytest.approx(v["speedup"] / v["macs_speedup"])
            assert (v["macs_speedup"] > 1) == (name != "original")
    skipped = [r for r in lat["rows"] if r["skipped"]]
    assert {r["mode"] for r in skipped} == {"graphs", "eager"}  # fp16 eager, all graphs
    assert all("CUDA" in r["skipped"] for r in skipped)
    assert not [r for r in lat["rows"] if r["error"]]


def test_dry_run_training_numbers_are_plausible(dry):
    _, doc = dry
    tr = doc["train"]
    assert tr["plan"]["E"] == 1 and tr["plan"]["t"] == 1
    assert tr["data"]["train"] > 0 and tr["data"]["test"] > 0
    assert 0 <= tr["original"]["acc"] <= 1 and tr["original"]["epochs"] == 1
    assert 0 < tr["pruned"]["macs"] < tr["original"]["macs"]
    assert 0 <= tr["pruned"]["acc_no_retrain"] <= 1
    assert set(tr["runs"]) == {"fine-tune", "lr-rewind", "scratch-e"}
    for name, r in tr["runs"].items():
        assert 0 <= r["acc"] <= 1 and r["epochs"] == r["planned_epochs"] == 1, name
        assert r["history"][0]["train_loss"] > 0
    assert tr["runs"]["fine-tune"]["history"][0]["lr"] == pytest.approx(1e-3)
    assert tr["runs"]["lr-rewind"]["history"][0]["lr"] == pytest.approx(0.1)


def test_report_has_sections_and_plot_and_reruns_from_json(dry):
    out, _ = dry
    md = (out / "report.md").read_text()
    for heading in ("# fxprune GPU run (DRY RUN", "## Targets", "## Latency", "### resnet18",
                    "## Training", "Liu et al. 2019", "Renda et al. 2020", "TensorRT"):
        assert heading in md, heading
    assert (out / "speedup.png").stat().st_size > 1000
    (out / "report.md").unlink()
    rc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_run.py"), "--report",
                         str(out)], capture_output=True, text=True, timeout=120, env=_env())
    assert rc.returncode == 0, rc.stderr
    assert (out / "report.md").read_text() == md


def test_pad_crop_flip_is_a_crop_of_the_padded_image_then_a_flip():
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    seed, pad = 7, 2
    got = pad_crop_flip(x, pad, torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)  # the same draws, in the same order
    oy = torch.randint(0, 2 * pad + 1, (6, 1), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (6, 1), generator=g)
    flip = torch.rand(6, 1, generator=g) < 0.5
    xp = torch.nn.functional.pad(x, (pad,) * 4)
    for i in range(6):
        y0, x0 = int(oy[i]), int(ox[i])
        want = xp[i, :, y0:y0 + 8, x0:x0 + 8]
        if flip[i]:
            want = want.flip(-1)
        assert torch.equal(got[i], want), i


@pytest.mark.parametrize("epoch_s,left", [(3.0, 200.0), (0.5, 1000.0), (10.0, 50.0),
                                          (1.0, 10_000.0)])
def test_plan_epochs_takes_the_largest_schedule_that_fits(epoch_s, left):
    s = TrainSettings()
    E, t, note = plan_epochs(epoch_s, left, s)

    def cost(e: int) -> float:
        return (e - 1 + 2 * min(e, max(1, round(s.t_frac * e))) + e) * epoch_s * s.safety

    assert s.min_epochs <= E <= s.max_epochs and 1 <= t <= E
    if cost(s.min_epochs) <= left:
        assert cost(E) <= left and (E == s.max_epochs or cost(E + 1) > left), note
    else:
        assert E == s.min_epochs and "cut short" in note


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_read_cifar10_keeps_per_class_limits_and_sorted_labels(tmp_path):
    path = tmp_path / "c.tar.gz"
    colours = {"cat": (200, 30, 30), "dog": (30, 30, 200)}
    with tarfile.open(path, "w:gz") as tf:
        for split in ("test", "train"):
            for cls in ("dog", "cat"):  # archive order differs from the sorted order
                for k in range(3):
                    raw = _jpeg(colours[cls])
                    info = tarfile.TarInfo(f"cifar10/{split}/{cls}/{k:04d}.jpg")
                    info.size = len(raw)
                    tf.addfile(info, io.BytesIO(raw))
    d = read_cifar10(path, per_class={"train": 2, "test": 1})
    (xtr, ytr, classes), (xte, yte, _) = d["train"], d["test"]
    assert classes == ["cat", "dog"]
    assert xtr.shape == (4, 3, 32, 32) and xtr.dtype == torch.uint8 and ytr.tolist() == [0, 0, 1, 1]
    assert xte.shape == (2, 3, 32, 32) and yte.tolist() == [0, 1]
    mean = xtr.float().mean(dim=(2, 3))
    assert torch.allclose(mean[0], torch.tensor([200.0, 30, 30]), atol=6)
    assert torch.allclose(mean[3], torch.tensor([30.0, 30, 200]), atol=6)


def _row(model: str, eff: float) -> dict:
    return {"model": model, "backend": "torch-cuda", "mode": "graphs", "dtype": "fp16",
            "batch": 64, "skipped": None, "error": None,
            "variants": {"original": {"median_ms": 2.0, "speedup": 1.0, "macs_speedup": 1.0,
                                      "efficiency": 1.0},
                         "r0.5": {"median_ms": 1.0, "speedup": 2.0, "macs_speedup": 2 / eff,
                                  "efficiency": eff}}}


def test_speed_target_checks_only_the_resnet_fp16_graph_batch64_rows():
    doc = {"latency": {"rows": [_row("resnet18", 0.9), _row("resnet50", 0.7),
                                {**_row("mobilenet_v2", 0.1)}]}}
    st = R.speed_target(doc)
    assert [c["model"] for c in st["checks"]] == ["resnet18", "resnet50"]
    assert st["verdict"].startswith("not met (1/2")
    assert R.speed_target({"latency": {"rows": [_row("resnet18", 0.85)]}})["verdict"] \
        .startswith("met")
    assert R.speed_target({})["verdict"].startswith("not measured")


def test_training_ordering_ties_within_noise_and_orders_beyond_it():
    runs = {"fine-tune": {"acc": 0.900}, "scratch-e": {"acc": 0.899}, "lr-rewind": {"acc": 0.930}}
    order = R.training_ordering({"train": {"runs": runs, "data": {"test": 10000}}})
    assert order["ordering"] == "LR rewind > fine-tune ≈ Scratch-E"
    assert 0 < order["noise"] < 0.02 and "Liu et al. 2019" in order["papers"]


def test_watchdog_marks_the_results_and_ends_a_stuck_process(tmp_path):
    script = (
        "import sys, time; sys.path.insert(0, sys.argv[1])\n"
        "from pathlib import Path\n"
        "from gpu.budget import Budget, Results, Watchdog\n"
        "r = Results(Path(sys.argv[2]) / 'results.json', {'status': 'running'}); r.save()\n"
        "Watchdog(Budget(0.1), 0.3, r, lambda m: None).start()\n"
        "time.sleep(30)\n")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script, str(ROOT / "bench"), str(tmp_path)],
                          timeout=60, env=_env())
    assert proc.returncode == 3 and time.perf_counter() - t0 < 20
    assert "watchdog" in json.loads((tmp_path / "results.json").read_text())["status"]


@pytest.mark.parametrize("doc", [
    {},
    {"status": "stopped by the watchdog (time budget spent)", "env": {"gpu": "X"},
     "stages": {"latency": {"status": "running"}},
     "latency": {"models": [{"model": "resnet18", "error": "TraceError: x"}], "rows": []}},
    {"train": {"data": {"source": "s", "train": 10, "test": 10}, "error": "OSError: gone"}},
])
def test_report_of_a_partial_run_is_still_written(doc, tmp_path):
    md = R.markdown(doc)
    assert "## Targets" in md and "not measured" in md
    assert R.plot(doc, tmp_path / "p.png") is False and not (tmp_path / "p.png").exists()


def test_training_past_its_deadline_plans_the_minimum_and_records_what_was_cut(tmp_path):
    from gpu.budget import Budget, Results
    from gpu.data import DeviceSplit, synthetic_cifar
    from gpu.train import run_training

    d = synthetic_cifar(64, 32)
    cpu = torch.device("cpu")
    splits = (DeviceSplit(*d["train"][:2], cpu), DeviceSplit(*d["test"][:2], cpu))
    s = TrainSettings(model_kwargs={"width": 4}, batch_size=32, eval_batch_size=32,
                      min_epochs=2, max_epochs=3)
    budget = Budget(1000)
    results = Results(tmp_path / "results.json", {})
    doc = run_training(results, budget, s, splits, stop_at_s=budget.elapsed() + 0.01,
                       log=lambda m: None)
    assert doc["plan"]["E"] == 2 and "cut short" in doc["plan"]["note"]
    assert doc["original"]["epochs"] == 1 and "stopped before epoch 1" in doc["original"]["truncated"]
    for name, r in doc["runs"].items():
        assert r["epochs"] == 0 and r["planned_epochs"] >= 1 and "truncated" in r, name
        assert 0 <= r["acc"] <= 1
    saved = json.loads((tmp_path / "results.json").read_text())["train"]
    assert set(saved["runs"]) == {"fine-tune", "lr-rewind", "scratch-e"}


def test_latency_past_its_deadline_skips_with_the_reason(tmp_path):
    from gpu.budget import Budget, Results
    from gpu.latency import LatencySettings, run_latency

    results = Results(tmp_path / "results.json", {})
    s = LatencySettings(backend="torch-cpu", models=[["resnet18", 32]], min_group_s=0.0)
    doc = run_latency(results, Budget(100), s, stop_at_s=0.0, log=lambda m: None)
    assert doc["models"] == [{"model": "resnet18", "skipped": "time budget spent before pruning"}]
    assert doc["rows"] == []


def test_compile_child_is_killed_at_its_time_box_and_says_so(tmp_path):
    from gpu.budget import CHILD_GROUPS, Budget, Results
    from gpu.latency import LatencySettings, run_compile

    results = Results(tmp_path / "results.json",
                      {"latency": {"models": [{"model": "resnet18", "variants": []}], "rows": []}})
    s = LatencySettings(backend="torch-cpu", models=[["resnet18", 32]], compile_backend="eager")
    t0 = time.perf_counter()
    run_compile(results, Budget(100), s, box_s=1.0, work=tmp_path / "w", log=lambda m: None)
    assert time.perf_counter() - t0 < 15 and not CHILD_GROUPS
    (row,) = results.doc["latency"]["rows"]
    assert row["model"] == "resnet18" and "time box" in row["skipped"]
    assert "time box" in results.doc["latency"]["compile_status"]
