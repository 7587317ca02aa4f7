"""The report of a GPU run: markdown tables, the target checks and one plot, all from
``results.json`` alone (``python bench/gpu_run.py --report OUTDIR``).

Targets: (1) for the ResNets in fp16 with CUDA graphs at batch 64, measured speed-up at
least 0.8x the MACs speed-up; (2) the ordering of fine-tune, Scratch-E and LR rewinding,
measured, next to the papers' numbers: what is compared is the *ordering*, not the
accuracies (the run trains for far fewer epochs than the papers' 160).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

__all__ = ["ANCHORS", "speed_target", "training_ordering", "markdown", "plot"]

#: Liu et al. 2019 (ICLR), "Rethinking the Value of Network Pruning", Table 1, L1-norm
#: filter pruning on CIFAR-10, mean of 5 runs. Entered by hand as recalled from the paper;
#: not checked against a copy of it in this repository: verify before quoting.
LIU_RESNET56_B = {"source": "Liu et al. 2019, Table 1 (L1-norm filter pruning, ResNet-56-B)",
                  "original": 93.14, "fine-tune": 92.67, "scratch-e": 92.54, "scratch-b": 93.05}


def _renda_anchor() -> dict[str, Any]:
    """Renda et al. 2020's anchor as the rewinding experiment states it (one source)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    try:
        import rewinding

        return dict(rewinding.ANCHORS[0])
    except Exception as e:  # the report must still be written
        return {"setting": f"unavailable ({type(e).__name__}: {e})", "source": "Renda et al. 2020"}


ANCHORS = {"liu": LIU_RESNET56_B}
_TARGET_EFF = 0.8
_NAMES = {"fine-tune": "fine-tune", "lr-rewind": "LR rewind", "scratch-e": "Scratch-E"}


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _ok_rows(doc: dict) -> list[dict]:
    return [r for r in doc.get("latency", {}).get("rows", [])
            if not r.get("skipped") and not r.get("error") and r.get("variants")]


def speed_target(doc: dict) -> dict[str, Any]:
    """Every ResNet pruned variant at fp16 / CUDA graphs / batch 64 against 0.8x MACs."""
    from .zoo import RESNETS

    checks = []
    for r in _ok_rows(doc):
        if (r["model"] in RESNETS and r["mode"] == "graphs" and r["dtype"] == "fp16"
                and r["batch"] == 64 and r["backend"] == "torch-cuda"):
            for name, v in r["variants"].items():
                if name != "original":
                    checks.append({"model": r["model"], "variant": name,
                                   "speedup": v["speedup"], "macs_speedup": v["macs_speedup"],
                                   "efficiency": v["efficiency"],
                                   "pass": v["efficiency"] >= _TARGET_EFF})
    if not checks:
        verdict = "not measured (no fp16 CUDA-graph batch-64 rows of the ResNets)"
    else:
        npass = sum(c["pass"] for c in checks)
        verdict = ("met" if npass == len(checks) else "not met") + \
            f" ({npass}/{len(checks)} variants at >= {_TARGET_EFF}x the MACs speed-up)"
    return {"verdict": verdict, "checks": checks}


def training_ordering(doc: dict) -> dict[str, Any]:
    """Measured accuracies, their ordering (ties within 2 standard errors), the papers'."""
    tr = doc.get("train", {})
    runs = {k: v for k, v in tr.get("runs", {}).items() if "acc" in v}
    n = tr.get("data", {}).get("test") or 10000
    out: dict[str, Any] = {"measured": {k: v["acc"] for k, v in runs.items()}}
    if runs:
        accs = sorted(runs.items(), key=lambda kv: -kv[1]["acc"])
        p = sum(v["acc"] for _, v in accs) / len(accs)
        noise = 2 * (2 * p * (1 - p) / n) ** 0.5  # 2 s.e. of a difference of accuracies
        text = _NAMES.get(accs[0][0], accs[0][0])
        for (_, a), (k, b) in zip(accs, accs[1:]):
            text += (" ≈ " if a["acc"] - b["acc"] < noise else " > ") + _NAMES.get(k, k)
        out.update(ordering=text, noise=noise)
    out["papers"] = (
        "Liu et al. 2019 (ResNet-56-B): fine-tune 92.67 ≈ Scratch-E 92.54 (within their "
        "5-run spread); Renda et al. 2020: LR rewind > fine-tune at the same retraining "
        "epochs (ResNet-56: 93.56 vs 92.20). Expected here: LR rewind > fine-tune ≈ Scratch-E.")
    return out


def _fmt_row(r: dict, names: list[str]) -> list[str]:
    head = [r["backend"], r["mode"] + (f" ({r['compile_backend']})" if r.get("compile_backend")
                                       else ""), r["dtype"], str(r["batch"])]
    if r.get("skipped"):
        return head + [f"skipped: {r['skipped']}"] + [""] * (len(names) - 1)
    if r.get("error"):
        return head + [f"error: {r['error']}"] + [""] * (len(names) - 1)
    cells = []
    for name in names:
        v = r["variants"].get(name)
        if v is None:
            cells.append("")
        elif name == "original":
            cells.append(f"{v['median_ms']:.3f}")
        else:
            cells.append(f"{v['median_ms']:.3f} ({v['speedup']:.2f}x / {v['macs_speedup']:.2f}x)")
    return head + cells


def _latency_md(doc: dict) -> list[str]:
    lat = doc.get("latency", {})
    parts = []
    for m in lat.get("models", []):
        if "variants" not in m:
            parts += [f"### {m['model']}", m.get("error") or m.get("skipped", "")]
            continue
        names = [v["name"] for v in m["variants"]]
        o = m["variants"][0]
        parts.append(f"### {m['model']} (input {'x'.join(map(str, m['input']))})")
        parts.append(_table(["variant", "ratio", "round_to", "MMACs", "M params",
                             "MACs speed-up", "prune s"],
                            [[v["name"], v["ratio"], v["round_to"], f"{v['macs'] / 1e6:.1f}",
                              f"{v['params'] / 1e6:.3f}", f"{o['macs'] / max(v['macs'], 1):.2f}x",
                              f"{v['prune_s']:.1f}"] for v in m["variants"]]))
        rows = [_fmt_row(r, names) for r in lat.get("rows", []) if r["model"] == m["model"]]
        rows.sort(key=lambda c: (c[0], c[1], c[2], int(c[3])))
        parts.append("median ms; pruned: ms (measured speed-up / MACs speed-up)\n\n"
                     + _table(["backend", "mode", "dtype", "batch"] + names, rows))
    return parts


def _training_md(doc: dict) -> list[str]:
    tr = doc.get("train")
    if not tr:
        return ["Not run."]
    if tr.get("error") and "original" not in tr:
        return [f"Failed: {tr['error']}"]
    plan, d = tr.get("plan", {}), tr.get("data", {})
    o, p = tr.get("original", {}), tr.get("pruned", {})
    parts = [f"Data: {d.get('source', '?')} ({d.get('train', '?')} train / "
             f"{d.get('test', '?')} test images, decoded in {d.get('decode_s', 0):.1f}s, held "
             f"on {tr.get('device', '?')}; random crop (pad 4) + flip on the device). "
             f"Schedule: E = {plan.get('E', '?')} epochs (paper: 160; {plan.get('note', '')}; "
             f"first epoch {plan.get('first_epoch_s', 0):.1f}s), fine-tune and LR rewind "
             f"t = {plan.get('t', '?')} epochs each, batch {tr['settings']['batch_size']}, "
             f"SGD lr {tr['settings']['lr']} (x0.1 at 50%/75%), fine-tune lr "
             f"{tr['settings']['ft_lr']}."]
    if tr.get("error"):
        parts.append(f"**Stopped by an error:** {tr['error']}")
    rows = []
    if "acc" in o:
        rows.append(["original (ResNet-56)", o.get("epochs"), f"{o['macs'] / 1e6:.1f}",
                     f"{100 * o['acc']:.2f}", LIU_RESNET56_B["original"]])
    if p:
        rows.append([f"pruned {p['preset']}, no retraining", 0, f"{p['macs'] / 1e6:.1f}",
                     f"{100 * p['acc_no_retrain']:.2f}", ""])
    for k, r in tr.get("runs", {}).items():
        if "acc" in r:
            rows.append([_NAMES.get(k, k) + (" (cut short)" if r.get("truncated") else ""),
                         f"{r['epochs']}/{r['planned_epochs']}",
                         f"{p.get('macs', 0) / 1e6:.1f}", f"{100 * r['acc']:.2f}",
                         LIU_RESNET56_B.get(k, "—")])
    parts.append(_table(["model", "epochs", "MMACs", "test top-1 %", "Liu et al. 2019 %"], rows))
    ren = _renda_anchor()
    parts.append("Papers:")
    parts.append(_table(["source", "setting", "fine-tune", "Scratch-E", "LR rewind"],
                                     [[LIU_RESNET56_B["source"], "160 epochs, 5 runs",
                                       LIU_RESNET56_B["fine-tune"], LIU_RESNET56_B["scratch-e"],
                                       "—"],
                                      [ren.get("source"), ren.get("setting"),
                                       ren.get("fine-tune", "?"), "—", ren.get("lr-rewind", "?")]]))
    return parts


def markdown(doc: dict) -> str:
    env = doc.get("env", {})
    st, order = speed_target(doc), training_ordering(doc)
    dry = " (DRY RUN on CPU: tiny sizes, not GPU figures)" if doc.get("dry_run") else ""
    head = (f"# fxprune GPU run{dry}\n\n"
            f"GPU: {env.get('gpu')} ({env.get('gpu_memory_gib', '?')} GiB, driver "
            f"{env.get('driver', '?')}); torch {env.get('torch')} (CUDA {env.get('cuda_runtime')}, "
            f"cuDNN {env.get('cudnn', '?')}), torchvision {env.get('torchvision')}; date "
            f"{env.get('date')}; CPU {env.get('cpu')} x{env.get('cpu_count')}. Status: "
            f"{doc.get('status')}; wall {doc.get('wall_s', 0):.0f}s of a "
            f"{doc.get('budget_s', 0):.0f}s budget.\n\n"
            f"TensorRT: {env.get('tensorrt')}\n\nONNX Runtime CUDA: {env.get('onnxruntime_cuda')}")
    stages = doc.get("stages", {})
    parts = [head,
             "## Stages\n\n" + _table(["stage", "status", "wall s"],
                                      [[k, v.get("status", ""), f"{v.get('wall_s', 0):.0f}"]
                                       for k, v in stages.items()]),
             "## Targets",
             f"- Speed: ResNets, fp16, CUDA graphs, batch 64, measured >= 0.8x MACs speed-up: "
             f"**{st['verdict']}**" + "".join(
                 f"\n  - {c['model']} {c['variant']}: {c['speedup']:.2f}x measured vs "
                 f"{c['macs_speedup']:.2f}x MACs ({c['efficiency']:.0%}) "
                 f"{'pass' if c['pass'] else 'FAIL'}" for c in st["checks"]),
             f"- Training ordering, measured: **{order.get('ordering', 'not measured')}**"
             + (f" (≈: within 2 s.e. = {100 * order['noise']:.2f} pts)" if "noise" in order
                else "") + f"\n- Papers: {order['papers']} Compare the ordering: this run trains "
             "for far fewer epochs than the papers' 160, so its accuracies are lower.",
             "## Latency (median of interleaved runs)"] + _latency_md(doc) + \
            ["## Training: ResNet-56 on CIFAR-10, l1-filter resnet56-b"] + _training_md(doc)
    return "\n\n".join(parts) + "\n"


def plot(doc: dict, path: Path) -> bool:
    """Measured vs MACs speed-up, one panel per (backend, mode, dtype, batch) measured.
    Returns False (and writes nothing) when there is no measured row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _ok_rows(doc)
    panels = sorted({(r["backend"], r["mode"], r["dtype"], r["batch"]) for r in rows})
    if not panels:
        return False
    models = sorted({r["model"] for r in rows})
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.9 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    hi = max(v["macs_speedup"] for r in rows for v in r["variants"].values()) * 1.1
    for ax, key in zip(axes.flat, panels):
        ax.plot([1, hi], [1, hi], "k--", lw=0.8, label="ideal (= MACs)")
        ax.plot([1, hi], [_TARGET_EFF, _TARGET_EFF * hi], "k:", lw=0.8, label="0.8x MACs")
        for r in rows:
            if (r["backend"], r["mode"], r["dtype"], r["batch"]) != key:
                continue
            i = models.index(r["model"])
            pts = [(v["macs_speedup"], v["speedup"]) for n, v in r["variants"].items()
                   if n != "original"]
            ax.plot(*zip(*pts), "os^Dvx"[i % 6], color=f"C{i}", label=r["model"])
        ax.set(title=f"{key[0]} {key[1]} {key[2]} batch {key[3]}",
               xlabel="MACs speed-up", ylabel="measured speed-up")
        ax.grid(alpha=0.3)
    handles = {lab: h for ax in axes.flat for h, lab in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles),
               fontsize=8)
    env = doc.get("env", {})
    fig.suptitle(f"{env.get('gpu')}, torch {env.get('torch')}, {env.get('date', '')[:10]}",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return True
