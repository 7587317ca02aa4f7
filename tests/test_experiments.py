"""Tests for the paper-reproduction experiments in bench/experiments/.

The weight-rewinding hooks in `common.py` (structured plans, chained over
iterative rounds; unstructured masks) and the batched data set; then each
experiment end to end on its `--preset smoke` (tiny models, 128 CIFAR-10 images,
a few epochs; about 15 s for both with one torch thread), checking the JSON,
markdown and PNG it writes and that a rerun resumes from the finished checkpoints.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

import fxprune
from fxprune.data import find_cifar10
from fxprune.passes.unstructured import apply_masks, magnitude_masks
from fxprune.train import load_matching

EXP = Path(__file__).resolve().parent.parent / "bench" / "experiments"
needs_cifar = pytest.mark.skipif(
    find_cifar10() is None, reason="CIFAR-10 tarball not found: set FXPRUNE_CIFAR10 or provide "
                                   "../shared/data/cifar10-jpg.tar.gz beside the repository")


def _load(name: str):
    if str(EXP) not in sys.path:
        sys.path.insert(0, str(EXP))
    spec = importlib.util.spec_from_file_location(f"bench_exp_{name}", EXP / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


C = _load("common")


def _tiny_resnet() -> torch.nn.Module:
    """ResNet-8 at width 4: three residual blocks, option-A shortcuts (channel padding)."""
    torch.manual_seed(0)
    return C.build_model("resnet8", width=4)


def _perturb(m: torch.nn.Module) -> torch.nn.Module:
    m = copy.deepcopy(m)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def test_internal_groups_leave_the_residual_stream() -> None:
    m, x = _tiny_resnet(), C.example_input()
    groups = C.internal_groups(m, x)
    assert sorted(groups) == [f"layer{s}.0.conv1.weight:0" for s in (1, 2, 3)]
    assert [groups[g] for g in sorted(groups)] == [4, 8, 16]


def test_rewind_from_plan_chains_iterative_plans() -> None:
    """Round-2 weights rewound through both plans equal the saved weights pruned by them."""
    x, saved_model = C.example_input(), _tiny_resnet()
    saved = copy.deepcopy(saved_model.state_dict())
    r1 = fxprune.prune(_perturb(saved_model), x, ratio=dict.fromkeys(
        C.internal_groups(saved_model, x), 0.5))
    r2 = fxprune.prune(_perturb(r1.module), x, ratio=dict.fromkeys(
        C.internal_groups(r1.module, x), 0.5))
    fn = C.rewind_from_plan(_tiny_resnet, x, [r1.plan, r2.plan])
    target = copy.deepcopy(r2.module)
    load_matching(target, fn(target, saved))
    ref = fxprune.apply_plan(fxprune.apply_plan(saved_model, x, r1.plan).module, x, r2.plan).module
    xx = torch.randn(3, 3, 32, 32)
    assert torch.equal(target.eval()(xx), ref.eval()(xx))
    assert not torch.equal(target(xx), r2.module.eval()(xx))  # not the perturbed weights


def test_rewind_masked_keeps_masks_and_zeros() -> None:
    """Masked raw weights take the saved values times the mask; masks survive."""
    m = _tiny_resnet()
    saved = copy.deepcopy(_perturb(m).state_dict())
    masked = apply_masks(m, magnitude_masks(m, 0.7, layers="conv+linear"), copy=True)
    mapped = C.rewind_masked(masked, saved)
    load_matching(masked, mapped)
    w, mask = masked.conv1.weight, masked.conv1.parametrizations.weight[0].mask
    assert torch.equal(w, saved["conv1.weight"] * mask)
    assert abs(C.measure(masked, C.example_input())["density"] - 0.3) < 0.01


def _run_and_check(name: str, tmp_path: Path, keys: tuple[str, ...]) -> dict:
    """Run `name --preset smoke` twice (the second resumes) and check what it writes."""
    mod = _load(name)
    out = tmp_path / f"{name}.json"
    argv = ["--preset", "smoke", "--out", str(out), "--work", str(tmp_path / "work")]
    assert mod.main(argv) == 0
    first = json.loads(out.read_text())
    assert mod.main(argv) == 0  # every run is finished: a rerun only reloads them
    payload = json.loads(out.read_text())
    for k in ("experiment", "preset", "config", "data", "anchors", "wall_s", *keys):
        assert k in payload, k
    assert payload["preset"] == "smoke" and payload["data"] == {"train": 128, "test": 64}
    md = out.with_suffix(".md").read_text()
    assert "preset `smoke`" in md and "128 train / 64 test" in md and "Agreement" in md
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob("*.tmp*"))
    return {"first": first, "again": payload}


@needs_cifar
def test_rethinking_smoke(tmp_path: Path) -> None:
    r = _run_and_check("rethinking", tmp_path, ("arms", "originals"))
    for a, b in zip(r["first"]["arms"], r["again"]["arms"]):
        assert set(a["retrain"]) == {"fine-tune", "scratch-e", "scratch-b"}
        assert a["pruned"]["macs"] < a["full"]["macs"]
        assert a["retrain"]["scratch-b"]["epochs"] > a["retrain"]["scratch-e"]["epochs"]
        assert {m: v["acc"] for m, v in a["retrain"].items()} == \
            {m: v["acc"] for m, v in b["retrain"].items()}
    md = (tmp_path / "rethinking.md").read_text()
    assert "93.63" in md and "93.78" in md  # the VGG-16-A anchor


@needs_cifar
def test_rewinding_smoke(tmp_path: Path) -> None:
    r = _run_and_check("rewinding", tmp_path, ("chains", "original"))
    chains = r["again"]["chains"]
    assert len(chains) == 12
    finals = {(c["kind"], c["mode"], c["method"]): c["rounds"][-1] for c in chains}
    for method in ("fine-tune", "weight-rewind", "lr-rewind"):
        one = finals["structured", "one-shot", method]
        it = finals["structured", "iterative", method]
        assert one["params"] == it["params"] < r["again"]["original"]["params"]
        u = finals["unstructured", "iterative", method]
        assert abs(u["density"] - 0.25) < 0.01
    md = (tmp_path / "rewinding.md").read_text()
    assert "92.2" in md and "93.56" in md and "93.36" in md  # the Renda anchor
