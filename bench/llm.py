"""Pruning Hugging Face LLMs: fxprune.hf against Torch-Pruning's LLM example (not run in CI).

    python bench/llm.py --quick --meta7b # small configs (5-7M params) + the 7B meta analysis
    python bench/llm.py                  # 270-350M params each, slow on 2 cores
    python bench/llm.py --models llama qwen2 --tools fxprune tp

Every model is built from a config with random weights (no downloads). Each
(model, tool) runs in its own subprocess so that its peak RSS (``ru_maxrss``) is its
own; ``extra_mb`` is the peak minus the RSS right after the model was built and the
tool's package imported, i.e. the memory the pruning itself needed. ``prune_s`` (wall)
and ``cpu_s`` (process CPU time, less sensitive to other jobs on a shared machine) time
the pruning call only. Until the ``llm_vs_tp`` results the import (~0.4 s ``fxprune.hf``,
~0.9 s ``torch_pruning``, which imports timm) was inside the clock and the baseline.
``--repeat N`` runs every (model, tool) N times, repeats outermost, and reports medians.
Memory, like for like: Torch-Pruning prunes the model it is given, as ``*-inplace``
does; plain ``fxprune`` leaves its input usable, so its ``extra_mb`` holds the whole
pruned model (copies of the untouched tensors included). Tools, all at ratio 0.5 with
L2 magnitude:

- ``fxprune``: ``fxprune.hf.prune(ratio={"heads": .5, "mlp": .5})`` (KV groups + MLP).
- ``fxprune+hidden``: the same plus ``hidden: .5``, the work Torch-Pruning's example does.
- ``fxprune-mlp`` / ``tp-mlp``: MLP channels only; ``tp-mlp`` is Torch-Pruning's
  DependencyGraph + ``GroupMagnitudeImportance(p=2)`` on each layer's gate_proj group
  (GPT-2: c_fc, BERT: intermediate.dense). GPT-2 and BERT run the MLP tools only (plain
  ``fxprune`` prunes just the MLP there: their configs cannot express pruned heads or
  hidden). TP has no pruner for GPT-2's ``Conv1D``; see ``_tp_mlp_prune`` for its error.
- ``*-inplace``: the same fxprune run with ``inplace=True`` (the input model is consumed,
  as Torch-Pruning's is), so only one model is in memory at a time.
- ``tp``: Torch-Pruning's ``examples/LLMs/prune_llm.py`` recipe: ``MetaPruner`` with
  ``num_heads`` for q/k/v, ``prune_num_heads=True``, ``prune_head_dims=False``,
  ``head_pruning_ratio=0.5``, ``pruning_ratio=0.5`` (which also prunes the hidden size),
  ``GroupMagnitudeImportance(p=2)``, then the example's manual config patch. Run on the
  q/k/v_proj models only (the example's scope); ``reloads`` says whether its
  ``save_pretrained`` output loads back with ``from_pretrained``. Both TP tools trace with
  ``use_cache=False`` (see ``_tp_inputs``: with transformers 5's KV cache in the trace,
  TP's grouping never terminates). Its GQA handling halves the query heads but keeps
  every KV head, so its model is a little larger than ``fxprune+hidden``'s.

``--meta7b`` also analyses a Llama-2-7B-shaped config on the meta device (no weights
in memory): the export-frontend ChannelGraph (``fxprune.analyze(frontend="export")``)
and ``fxprune.hf.apply`` building the pruned model and its config, with peak RSS.
Results: ``bench/results/llm.json`` and ``llm.md``. Figures from a shared 2-core machine
are noisy; the table says which machine and which settings produced them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent

_DEC = dict(hidden_size=1024, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=4,
            intermediate_size=2816, vocab_size=32000, max_position_embeddings=512)
_DEC_Q = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
              intermediate_size=704, vocab_size=8000, max_position_embeddings=256)
FULL = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", _DEC),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", _DEC),
    "mistral": ("MistralForCausalLM", "MistralConfig", {**_DEC, "sliding_window": None}),
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", dict(n_embd=1024, n_layer=24, n_head=16, n_positions=512)),
    "bert": ("BertForSequenceClassification", "BertConfig", dict(hidden_size=1024, num_hidden_layers=24,
                                                   num_attention_heads=16, intermediate_size=4096)),
}
QUICK = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", _DEC_Q),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", _DEC_Q),
    "mistral": ("MistralForCausalLM", "MistralConfig", {**_DEC_Q, "sliding_window": None}),
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", dict(n_embd=256, n_layer=4, n_head=8, n_positions=256,
                                                    vocab_size=8000)),
    "bert": ("BertForSequenceClassification", "BertConfig", dict(hidden_size=256, num_hidden_layers=4, vocab_size=8000,
                                                   num_attention_heads=8, intermediate_size=1024)),
}
LLAMA_7B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096)
TP_MODELS = {"llama", "qwen2", "mistral"}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _build(spec, device: str = "cpu"):
    import torch
    import transformers

    cls, cfg_cls, kw = spec
    cfg = getattr(transformers, cfg_cls)(**kw)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        return getattr(transformers, cls)(cfg).eval()


def _tp_inputs(ids) -> dict:
    """Torch-Pruning's tracing input: ``use_cache=False``. transformers 5's DynamicCache
    starts each layer's keys/values as an empty tensor and ``torch.cat``s onto it (4.x
    appended the first states, no cat); TP's graph maps that cat with unknown offsets and
    closes a cycle through rotate_half's cat, whose +head_dim/2 offset grows the indices on
    every lap, so ``get_pruning_group(q_proj)`` never ends. The cache is no part of what is
    pruned, so tracing without it is the example's graph as it ran on transformers 4."""
    return {"input_ids": ids, "use_cache": False}


def _tp_prune(model, ids):
    import torch_pruning as tp

    num_heads = {}
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            num_heads[m.q_proj] = model.config.num_attention_heads
            num_heads[m.k_proj] = model.config.num_key_value_heads
            num_heads[m.v_proj] = model.config.num_key_value_heads
    gqa = model.config.num_attention_heads != model.config.num_key_value_heads
    pruner = tp.pruner.MetaPruner(
        model, example_inputs=_tp_inputs(ids), importance=tp.importance.GroupMagnitudeImportance(p=2),
        global_pruning=False, pruning_ratio=0.5, ignored_layers=[model.lm_head],
        num_heads=num_heads, prune_num_heads=True, prune_head_dims=False,
        head_pruning_ratio=0.5, round_to=4,
        output_transform=lambda out: out.logits)  # transformers 5 returns a ModelOutput
    for g in pruner.step(interactive=True):
        g.prune()
    model.config.hidden_size = model.lm_head.in_features  # the example's manual patch
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            m.num_heads = m.q_proj.out_features // m.head_dim
            model.config.num_attention_heads = m.num_heads
            if not gqa:
                m.num_key_value_heads = m.num_heads
            m.num_key_value_groups = m.num_heads // max(m.k_proj.out_features // m.head_dim, 1)
        elif name.endswith("mlp"):
            model.config.intermediate_size = m.gate_proj.out_features
    if not gqa:
        model.config.num_key_value_heads = model.config.num_attention_heads
    return model


# where each family's MLP starts: (blocks, first MLP layer, config key of its width)
_TP_MLP = {
    "llama": (lambda m: m.model.layers, "mlp.gate_proj", "intermediate_size"),
    "gpt2": (lambda m: m.transformer.h, "mlp.c_fc", "n_inner"),
    "bert": (lambda m: m.bert.encoder.layer, "intermediate.dense", "intermediate_size"),
}


def _tp_mlp_prune(model, ids):
    """Torch-Pruning's low-level API on the MLP groups only: DependencyGraph, the group of
    each layer's first MLP projection (gate_proj / intermediate.dense / c_fc),
    GroupMagnitudeImportance(p=2), half of the channels removed.

    GPT-2's c_fc / c_proj are transformers' ``Conv1D`` (``addmm(bias, x, weight)``, weight
    stored [in, out]), a module TP 1.6 has no pruner for: it takes their tensors as
    "unwrapped parameters" (pruned on their last dim) and the ``AddmmBackward`` between
    them as an element-wise op, so the c_fc group is coupled to the hidden channels and
    scoring it fails. That failure is recorded as TP's result; a Conv1D pruner and
    importance of our own (``customized_pruners``) would be a different tool."""
    import torch
    import torch_pruning as tp

    family = model.config.model_type if model.config.model_type in _TP_MLP else "llama"
    blocks, first, width_key = _TP_MLP[family]
    inputs = {"input_ids": ids} if family == "bert" else _tp_inputs(ids)  # BERT has no cache
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=inputs,
                                               output_transform=lambda out: out.logits)
    imp = tp.importance.GroupMagnitudeImportance(p=2)
    for layer in blocks(model):
        root = layer.get_submodule(first)
        if isinstance(root, torch.nn.Linear):
            fn, n = tp.prune_linear_out_channels, root.out_features
        else:  # transformers' Conv1D: TP sees only its parameters
            root, fn, n = root.weight, tp.prune_parameter_out_channels, root.nf
        full = dg.get_pruning_group(root, fn, idxs=list(range(n)))
        drop = imp(full).argsort()[: n // 2].tolist()
        dg.get_pruning_group(root, fn, idxs=drop).prune()
    width = blocks(model)[0].get_submodule(first)
    setattr(model.config, width_key, width.weight.shape[0 if family != "gpt2" else 1])
    return model


def _reloads(model, ids) -> str:
    """Does save_pretrained -> from_pretrained give the same logits? ("yes" / the error)."""
    import torch

    with tempfile.TemporaryDirectory() as d:
        try:
            model.save_pretrained(d)
            back = type(model).from_pretrained(d).eval()
            with torch.no_grad():
                a, b = model(input_ids=ids).logits, back(input_ids=ids).logits
            rel = float((a - b).abs().max() / a.abs().max())
            return "yes" if rel <= 1e-5 else f"logits differ by {rel:.1e}"
        except Exception as e:  # noqa: BLE001 - the failure is the measurement
            return f"no: {type(e).__name__}: {str(e).splitlines()[0][:120]}"


def worker(model_name: str, tool: str, quick: bool) -> dict:
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    spec = (QUICK if quick else FULL)[model_name]
    model = _build(spec)
    n0 = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, model.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))
    if tool.startswith("tp"):  # imported before the clock and the RSS baseline: a one-time
        import torch_pruning  # noqa: F401  cost (torch_pruning pulls in timm: ~0.9 s)
    else:
        import fxprune.hf as H
    base = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    if tool == "tp":
        pruned = _tp_prune(model, ids)
    elif tool == "tp-mlp":
        pruned = _tp_mlp_prune(model, ids)
    else:
        base_tool, inplace = tool.removesuffix("-inplace"), tool.endswith("-inplace")
        ratio = {"mlp": 0.5} if base_tool == "fxprune-mlp" else {"heads": 0.5, "mlp": 0.5}
        if base_tool == "fxprune+hidden":
            ratio["hidden"] = 0.5
        if model_name in ("gpt2", "bert"):  # their configs cannot express pruned heads
            ratio = {"mlp": 0.5}
        pruned = H.prune(model, ids, ratio=ratio, criterion="l2", verify=False, inplace=inplace)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _peak_mb()
    n1 = sum(p.numel() for p in pruned.parameters())
    row = {"model": model_name, "tool": tool, "params_M": round(n0 / 1e6, 1),
           "pruned_params_M": round(n1 / 1e6, 1), "prune_s": round(secs, 2),
           "cpu_s": round(cpu, 2),
           "rss_after_build_mb": round(base), "peak_mb": round(peak), "extra_mb": round(peak - base)}
    row["reloads"] = _reloads(pruned, ids)
    return row


def worker_meta7b() -> dict:
    import torch

    import fxprune
    import fxprune.hf as H
    from fxprune.hf_apply import HFPlan

    base = _rss_mb()
    model = _build(("LlamaForCausalLM", "LlamaConfig", LLAMA_7B), device="meta")
    n0 = sum(p.numel() for p in model.parameters())
    sys.path.insert(0, str(ROOT / "tests"))
    from hf_models import HFWrapper

    ids = torch.zeros(1, 16, dtype=torch.long, device="meta")
    t0 = time.perf_counter()
    cg = fxprune.analyze(HFWrapper(model).eval(), (ids,), frontend="export", ignore=[model.lm_head])
    t_analyze = time.perf_counter() - t0
    # meta tensors hold no values, so no scores: the plan removes the first half of every
    # set, which is enough to show the pruned model + config can be built without weights
    fam = H.family_of(model)
    sets = fam.unit_sets(model, "groups", ("heads", "mlp"))
    plan = HFPlan(fam.name, "groups", tuple(sets), {s.key: tuple(range(s.size // 2)) for s in sets})
    t1 = time.perf_counter()
    pruned = H.apply(model, plan)
    t_apply = time.perf_counter() - t1
    return {"model": "llama-7b-shape (meta)", "params_M": round(n0 / 1e6, 1),
            "groups": len(cg.groups), "frozen": len(cg.frozen), "analyze_s": round(t_analyze, 1),
            "apply_s": round(t_apply, 2), "pruned_params_M": round(sum(
                p.numel() for p in pruned.parameters()) / 1e6, 1),
            "pruned_config": {k: getattr(pruned.config, k) for k in (
                "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size")},
            "rss_before_mb": round(base), "peak_mb": round(_peak_mb())}


def _spawn(argv: list[str], timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout:.0f} s"}
    if run.returncode != 0:
        return {"error": (run.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(run.stdout.strip().splitlines()[-1])


def _median_row(runs: list[dict]) -> dict:
    """One row per (model, tool): the median of every timing/memory figure over the repeats
    (each repeat its own process), with how many repeats there were and the spread of prune_s."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    row = dict(ok[0])
    for k in ("prune_s", "cpu_s", "rss_after_build_mb", "peak_mb", "extra_mb"):
        row[k] = round(statistics.median(r[k] for r in ok), 3)
    row["runs"] = len(ok)
    row["prune_s_all"] = [r["prune_s"] for r in ok]
    if len(ok) < len(runs):
        row["errors"] = [r["error"] for r in runs if "error" in r]
    return row


PAIRS = [("fxprune+hidden", "tp"), ("fxprune+hidden-inplace", "tp"),
         ("fxprune-mlp", "tp-mlp"), ("fxprune-mlp-inplace", "tp-mlp")]


def _versus(rows: list[dict]) -> list[str]:
    """fxprune against Torch-Pruning on the same work (same model, same units removed)."""
    by = {(r["model"], r["tool"]): r for r in rows if "error" not in r}
    out = ["| model | fxprune tool | TP tool | speedup (wall) | speedup (CPU) | extra MB fx / TP "
           "| peak MB fx / TP |", "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for m in dict.fromkeys(r["model"] for r in rows):
        for fx, tp in PAIRS:
            a, b = by.get((m, fx)), by.get((m, tp))
            if a and b:
                out.append(f"| {m} | {fx} | {tp} | {b['prune_s'] / a['prune_s']:.1f}x | "
                           f"{b['cpu_s'] / a['cpu_s']:.1f}x | {a['extra_mb']:.0f} / "
                           f"{b['extra_mb']:.0f} | {a['peak_mb']:.0f} / {b['peak_mb']:.0f} |")
    return out if len(out) > 2 else []


def _markdown(rows: list[dict], meta: dict | None, args) -> str:
    lines = [f"# LLM pruning bench ({'--quick' if args.quick else 'full'} configs)", "",
             f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
             "(shared with other jobs: times are noisy); random weights from configs; ratio 0.5, L2; "
             f"torch threads {max(1, (os.cpu_count() or 2) // 2)} for every tool; medians of "
             f"{args.repeat} runs, each in its own process, tools interleaved.",
             f"command: `python bench/llm.py {' '.join(sys.argv[1:])}`", "",
             "| model | tool | params M | pruned M | prune s | (all runs) | CPU s | extra MB | "
             "peak MB | reloads |",
             "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['tool']} | error: {r['error']} | | | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['tool']} | {r['params_M']} | {r['pruned_params_M']} | "
                     f"{r['prune_s']} | {r.get('prune_s_all', '')} | {r.get('cpu_s', '')} | "
                     f"{r['extra_mb']:.0f} | {r['peak_mb']:.0f} | {r.get('reloads', '')} |")
    vs = _versus(rows)
    if vs:
        lines += ["", "## fxprune vs Torch-Pruning (same model, same work; TP time / fxprune time)",
                  ""] + vs
    if meta:
        lines += ["", "## 7B-shaped Llama on the meta device", "", "```", json.dumps(meta, indent=1), "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", nargs="+", default=list(FULL))
    ap.add_argument("--tools", nargs="+",
                    default=["fxprune", "fxprune+hidden", "tp", "fxprune-mlp", "tp-mlp"])
    ap.add_argument("--meta7b", action="store_true", help="also the 7B-shaped meta analysis")
    ap.add_argument("--name", help="results file stem (default llm / llm_quick)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per (model, tool); the table shows medians")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per fxprune run")
    ap.add_argument("--tp-timeout", type=float, default=600,
                    help="seconds per Torch-Pruning run (its DependencyGraph can loop forever on "
                         "transformers 5 models, cf. VainF/Torch-Pruning#527)")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "TOOL"), help=argparse.SUPPRESS)
    ap.add_argument("--worker-meta7b", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.quick)))
        return
    if args.worker_meta7b:
        print(json.dumps(worker_meta7b()))
        return
    runs: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.repeat):  # repeats outermost: a burst of load hits every tool alike
        for m in args.models:
            for tool in args.tools:
                if m not in TP_MODELS and (tool == "tp" or "hidden" in tool):
                    continue  # the LLM example's scope (q/k/v_proj); GPT-2/BERT: MLP only
                argv = ["--worker", m, tool] + (["--quick"] if args.quick else [])
                r = {"model": m, "tool": tool,
                     **_spawn(argv, args.tp_timeout if tool.startswith("tp") else args.timeout)}
                print(json.dumps(r), flush=True)
                runs.setdefault((m, tool), []).append(r)
    rows = [_median_row(v) for v in runs.values()]
    meta = _spawn(["--worker-meta7b"], args.timeout) if args.meta7b else None
    if meta:
        print(json.dumps(meta), flush=True)
    RESULTS.mkdir(exist_ok=True)
    name = args.name or ("llm_quick" if args.quick else "llm")
    (RESULTS / f"{name}.json").write_text(json.dumps(
        {"rows": rows, "runs": [r for v in runs.values() for r in v], "meta7b": meta}, indent=1))
    (RESULTS / f"{name}.md").write_text(_markdown(rows, meta, args))
    print(_markdown(rows, meta, args))


if __name__ == "__main__":
    main()
