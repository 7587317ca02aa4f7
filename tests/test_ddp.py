"""Two-process DistributedDataParallel run of the training loop (gloo, CPU).

Launches `fxprune.train.ddp_demo` under torchrun (`python -m torch.distributed.run`)
with 2 processes x batch 8 and compares with the documented 1-process twin
(batch 16, same sampler permutation): see the ddp_demo module docstring."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from fxprune.train import read_metrics
from fxprune.train.ddp_demo import make_model, run

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 2

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


def _launch(out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "fxprune.train.ddp_demo", "--out", str(out), "--batch-size", "8",
           "--epochs", str(EPOCHS)]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_two_ranks_match_each_other_and_the_single_process_twin(tmp_path):
    proc = _launch(tmp_path / "ddp")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "ddp" / "final_rank0.pt")
    r1 = torch.load(tmp_path / "ddp" / "final_rank1.pt")
    assert r0.keys() == r1.keys()
    for k in r0:  # same averaged gradients on both ranks -> the very same weights
        assert torch.equal(r0[k], r1[k]), k
    single = run(tmp_path / "single", batch_size=16, epochs=EPOCHS)
    start = make_model().state_dict()
    for k in r0:
        assert not torch.equal(single[k], start[k]), k  # training did move the weights
        torch.testing.assert_close(r0[k], single[k], rtol=0, atol=1e-5)
    # only rank 0 wrote: exactly one metrics line per epoch, same LRs as the twin
    ddp_metrics = read_metrics(tmp_path / "ddp" / "run")
    twin_metrics = read_metrics(tmp_path / "single" / "run")
    assert [r["epoch"] for r in ddp_metrics] == list(range(EPOCHS))
    assert [r["lr"] for r in ddp_metrics] == [r["lr"] for r in twin_metrics]
    for a, b in zip(ddp_metrics, twin_metrics):  # all-reduced metrics cover the whole set
        assert a["train_acc"] == pytest.approx(b["train_acc"])
        assert a["test_acc"] == pytest.approx(b["test_acc"])
