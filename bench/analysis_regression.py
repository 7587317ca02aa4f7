"""Analysis time of this checkout against an earlier commit, side by side (not run in CI).

    python bench/analysis_regression.py --base f0507fb~1          # before the export frontend
    python bench/analysis_regression.py --base HEAD~3 --models resnet18,vit_b_16 --rounds 3

The issue that added the export frontend and the functional-op rules asked that the
analysis of the torchvision zoo stay within 1.5x of its time before that work. This
checks it: ``--base`` is checked out into a temporary git worktree, and each model's
``fxprune.analyze(model, x)`` (the default frontend, one torch thread, median of
``--repeats`` after one warm-up) is timed in a fresh subprocess per (version, model,
round), the two versions alternating so machine load hits both alike. The child
imports the version it is given by pointing the editable install's package map at that
tree. Prints a table and the median ratio, and writes ``results/analysis_regression.md``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS = ["resnet18", "resnet50", "resnet152", "mobilenet_v2", "mobilenet_v3_large",
          "efficientnet_b0", "densenet121", "regnet_y_400mf", "convnext_tiny", "vgg16",
          "shufflenet_v2_x1_0", "vit_b_16", "swin_t", "maxvit_t"]
LIMIT = 1.5


def _import_from(root: Path) -> None:
    """Make ``import fxprune`` load the package under ``root`` (also its passes/ and models/,
    which the editable install maps as fxprune.passes / fxprune.models)."""
    sys.path.insert(0, str(root))
    for finder in sys.meta_path:
        mapping = getattr(sys.modules.get(getattr(finder, "__module__", ""), None), "MAPPING", None)
        if isinstance(mapping, dict) and "fxprune" in mapping:
            mapping.update({"fxprune": str(root / "fxprune"),
                            "fxprune.passes": str(root / "passes"),
                            "fxprune.models": str(root / "models")})


def child(root: Path, name: str, repeats: int) -> None:
    _import_from(root)
    import torch
    import torchvision
    import warnings

    import fxprune

    assert Path(fxprune.__file__).resolve().is_relative_to(root.resolve()), fxprune.__file__
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    fxprune.analyze(model, x)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fxprune.analyze(model, x)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"s": statistics.median(times)}))


def _time(root: Path, name: str, repeats: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", str(root), name, str(repeats)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["s"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="f0507fb~1", help="git revision to compare against")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--repeats", type=int, default=5, help="timed analyses per subprocess")
    p.add_argument("--rounds", type=int, default=2, help="subprocesses per version and model")
    p.add_argument("--child", nargs=3, metavar=("ROOT", "MODEL", "REPEATS"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child(Path(a.child[0]), a.child[1], int(a.child[2]))
        return 0
    base_rev = subprocess.run(["git", "rev-parse", "--short", a.base], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
    head_rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(base), base_rev],
                       cwd=ROOT, check=True)
        try:
            for name in a.models.split(","):
                t = {"base": [], "head": []}
                for _ in range(a.rounds):
                    t["base"].append(_time(base, name, a.repeats))
                    t["head"].append(_time(ROOT, name, a.repeats))
                b, h = statistics.median(t["base"]), statistics.median(t["head"])
                rows.append((name, b, h, h / b))
                print(f"{name}: base {b * 1e3:.1f} ms, head {h * 1e3:.1f} ms, {h / b:.2f}x",
                      flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT)
    ratios = [r[3] for r in rows]
    lines = [f"# Analysis time: HEAD ({head_rev}) vs {a.base} ({base_rev})", "",
             f"`python bench/analysis_regression.py --base {a.base}`: `fxprune.analyze(model, x)`,"
             f" torchvision, 224x224, 1 thread, median of {a.repeats} per subprocess, "
             f"{a.rounds} alternating subprocesses per version.", "",
             "| model | base ms | HEAD ms | HEAD / base |", "|---|---:|---:|---:|"]
    lines += [f"| {n} | {b * 1e3:.1f} | {h * 1e3:.1f} | {r:.2f}x |" for n, b, h, r in rows]
    med, worst = statistics.median(ratios), max(ratios)
    lines += ["", f"Median HEAD / base: **{med:.2f}x**, worst {worst:.2f}x "
                  f"(limit {LIMIT}x: {'met' if worst <= LIMIT else 'NOT met'} on every model)."]
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "results" / "analysis_regression.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
