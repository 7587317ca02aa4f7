"""The real-world suite's model list: one builder per entry, nothing downloaded.

    python bench/realworld_models.py                 # list the suite (name, family)
    python bench/realworld_models.py --refresh-timm  # re-pick timm's smallest variants

Every model is built from code or a config with random weights (timm
``pretrained=False``, torchvision ``weights=None``, Hugging Face from a small
config, Ultralytics from its yaml with its offline switches on). A builder
returns a :class:`Built`: the model in eval mode, its example inputs (a tuple of
positional arguments), the qualified names of its head (classifier or box/class
predictors, kept whole), and which part of the model is pruned.

timm: one model per family, a family being the timm module plus the name's
stem (``resnet:seresnet``, ``efficientnet:mixnet`` ...); its smallest variant
by parameter count (each candidate is built on the ``meta`` device) is picked
programmatically and cached in ``bench/results/realworld.timm.json``. timm's
own ``test_*`` models are left out: they are not models anyone deploys.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

__all__ = ["Built", "Entry", "entries", "entry", "timm_picks", "head_names"]

# Nothing may reach the network: set before transformers / ultralytics import.
for _k, _v in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("YOLO_OFFLINE", "1"),
               ("HF_DATASETS_OFFLINE", "1")):
    os.environ.setdefault(_k, _v)

HERE = Path(__file__).resolve().parent
TIMM_CACHE = HERE / "results" / "realworld.timm.json"
SKIP_PREFIXES = ("test_",)
NAME_PREFIXES = ("tf_", "gluon_", "legacy_")  # kept in the stem: they are other code paths


@dataclass
class Built:
    """A model ready to prune: eval mode, positional example inputs, head names."""

    model: nn.Module
    inputs: tuple
    head: list[str]
    scope: str = "whole model"


@dataclass(frozen=True)
class Entry:
    name: str  # "timm/resnet18d", "hf/bert", "yolo/yolov8n", "tv/r3d_18"
    family: str  # "timm:resnet:seresnet", "hf", "yolo", "tv-seg", "tv-det", "tv-video", "tv-flow"
    build: Callable[[], Built] = field(repr=False, compare=False)
    fallback: Callable[[], Built] | None = field(default=None, repr=False, compare=False)


def _qualname(model: nn.Module, module: nn.Module) -> str:
    for n, m in model.named_modules():
        if m is module:
            return n
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(model).__name__}")


def _last_layer(model: nn.Module, prefix: str) -> list[str]:
    """The last Linear / ConvNd under ``prefix`` (the predictor of a head container)."""
    root = model.get_submodule(prefix) if prefix else model
    layers = [n for n, m in root.named_modules()
              if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    if not layers:
        return []
    return [f"{prefix}.{layers[-1]}".strip(".") if layers[-1] else prefix]


def head_names(model: nn.Module) -> list[str]:
    """The classifier to keep whole, found by convention: timm's ``get_classifier()``,
    Hugging Face's ``lm_head``/``classifier``/``score``, torchvision's
    ``fc``/``classifier``/``heads``/``head`` (the last Linear/Conv inside a container)."""
    if hasattr(model, "get_classifier"):
        heads = model.get_classifier()
        heads = heads if isinstance(heads, (tuple, list)) else (heads,)
        names = []
        for h in heads:
            if isinstance(h, nn.Module) and any(True for _ in h.parameters()):
                names += _last_layer(model, _qualname(model, h))
        if names:
            return names
    for attr in ("lm_head", "classifier", "score", "fc", "heads", "head"):
        if isinstance(getattr(model, attr, None), nn.Module):
            found = _last_layer(model, attr)
            if found:
                return found
    return []


def _rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def _tokens(n: int, vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(0))


# --- timm -------------------------------------------------------------------

def _family_key(module: str, name: str) -> str:
    rest, pre = name, ""
    for p in NAME_PREFIXES:
        if rest.startswith(p):
            pre, rest = p, rest[len(p):]
    return f"{module}:{pre}{re.match(r'[a-z]+', rest).group(0)}"


def _meta_params(name: str) -> int | None:
    import timm

    try:
        with torch.device("meta"):
            m = timm.create_model(name, pretrained=False)
        return sum(p.numel() for p in m.parameters())
    except Exception:  # a model that cannot be built on meta is not picked by size
        return None


def pick_timm(progress: bool = False) -> dict[str, Any]:
    """{family: {"model", "params", "candidates"}}: the smallest buildable variant."""
    import timm

    families: dict[str, list[str]] = {}
    for module in timm.list_modules():
        for name in timm.list_models(module=module):
            if not name.startswith(SKIP_PREFIXES):
                families.setdefault(_family_key(module, name), []).append(name)
    picks = {}
    for i, (fam, names) in enumerate(sorted(families.items())):
        sized = [(p, len(n), n) for n in names if (p := _meta_params(n)) is not None]
        if progress:
            print(f"[{i + 1}/{len(families)}] {fam}: {len(sized)}/{len(names)} built", flush=True)
        if sized:
            p, _, n = min(sized)
            picks[fam] = {"model": n, "params": p, "candidates": len(names)}
    return {"timm": timm.__version__, "picks": picks}


def timm_picks(refresh: bool = False) -> dict[str, dict[str, Any]]:
    """The cached picks, re-made when missing, stale (another timm) or asked for."""
    import timm

    data = json.loads(TIMM_CACHE.read_text()) if TIMM_CACHE.exists() else {}
    if refresh or data.get("timm") != timm.__version__:
        data = pick_timm(progress=True)
        TIMM_CACHE.parent.mkdir(parents=True, exist_ok=True)
        TIMM_CACHE.write_text(json.dumps(data, indent=1, sort_keys=True))
    return data["picks"]


def _timm(name: str, size: int | None = None) -> Callable[[], Built]:
    def build() -> Built:
        import timm

        model = timm.create_model(name, pretrained=False).eval()
        side = model.pretrained_cfg.get("input_size", (3, 224, 224))
        shape = (1, side[0], size, size) if size else (1, *side)
        return Built(model, (_rand(*shape),), head_names(model))
    return build


# --- Hugging Face -------------------------------------------------------------

def _hf(cls_name: str, cfg_name: str, cfg: dict, inputs: Callable[[Any], tuple],
        model_attr: str | None = None) -> Callable[[], Built]:
    def build() -> Built:
        import transformers

        torch.manual_seed(0)
        config = getattr(transformers, cfg_name)(**cfg)
        model = getattr(transformers, cls_name)(config).eval()
        return Built(model, inputs(config), head_names(model))
    return build


_BERT = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
             vocab_size=30522, max_position_embeddings=512)
# Decoders scaled down with a real LLM's proportions: a full 32k-50k vocabulary over a tiny
# hidden size would make the (ignored) LM head ~90% of the MACs, where it is 2-25% in
# real models, and then no pruning of heads and MLPs could remove 30% of the MACs.
_DECODER = dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                num_attention_heads=8, num_key_value_heads=2, vocab_size=8000,
                max_position_embeddings=2048, use_cache=False)
_VISION = dict(image_size=224, num_labels=1000)


def _ids(n: int = 32):
    return lambda cfg: (_tokens(n, cfg.vocab_size),)


def _pixels(side: int = 224):
    return lambda cfg: (_rand(1, 3, side, side),)


def _hf_entries() -> list[Entry]:
    specs = [
        ("bert_seqcls", "BertForSequenceClassification", "BertConfig", _BERT, _ids()),
        ("roberta", "RobertaModel", "RobertaConfig", _BERT, _ids()),
        ("distilbert", "DistilBertModel", "DistilBertConfig",
         dict(dim=256, n_layers=4, n_heads=4, hidden_dim=1024), _ids()),
        ("gpt2_lm", "GPT2LMHeadModel", "GPT2Config",
         dict(n_embd=512, n_layer=4, n_head=8, n_positions=512, vocab_size=8000,
              use_cache=False), _ids()),
        ("llama_gqa", "LlamaForCausalLM", "LlamaConfig", _DECODER, _ids()),
        ("qwen2_gqa", "Qwen2ForCausalLM", "Qwen2Config", _DECODER, _ids()),
        ("mistral_gqa", "MistralForCausalLM", "MistralConfig", _DECODER, _ids()),
        ("vit_cls", "ViTForImageClassification", "ViTConfig",
         dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=3,
              intermediate_size=768, **_VISION), _pixels()),
        ("swin_cls", "SwinForImageClassification", "SwinConfig",
         dict(embed_dim=48, depths=[2, 2, 2, 2], num_heads=[3, 3, 6, 12], **_VISION), _pixels()),
        ("convnext_cls", "ConvNextForImageClassification", "ConvNextConfig",
         dict(hidden_sizes=[48, 96, 192, 384], depths=[2, 2, 2, 2], **_VISION), _pixels()),
        ("t5_encoder", "T5EncoderModel", "T5Config",
         dict(d_model=256, d_ff=1024, d_kv=32, num_layers=4, num_heads=8, vocab_size=32128,
              use_cache=False), _ids()),
    ]
    return [Entry(f"hf/{n}", "hf", _hf(cls, cfg_name, cfg, inp))
            for n, cls, cfg_name, cfg, inp in specs]


# --- Ultralytics ----------------------------------------------------------------

def yolo_head(model: nn.Module) -> list[str]:
    """The Detect/Segment head's predictors: the last conv of every ``cv2``/``cv3``/``cv4``
    branch (boxes, classes, mask coefficients), the mask prototype's output conv, DFL."""
    head_idx = len(model.model) - 1
    head = model.model[-1]
    names = []
    for attr in ("cv2", "cv3", "cv4", "one2one_cv2", "one2one_cv3"):
        for i, branch in enumerate(getattr(head, attr, None) or ()):
            names += _last_layer(model, f"model.{head_idx}.{attr}.{i}")
    if hasattr(head, "proto"):
        names += _last_layer(model, f"model.{head_idx}.proto")
    if hasattr(head, "dfl") and any(True for _ in head.dfl.parameters()):
        names.append(f"model.{head_idx}.dfl")
    return names


def _yolo(cfg: str, side: int = 640) -> Callable[[], Built]:
    def build() -> Built:
        from ultralytics.nn.tasks import DetectionModel, SegmentationModel
        from ultralytics.utils import SETTINGS

        if "sync" in SETTINGS:  # no analytics events
            SETTINGS.update({"sync": False})
        torch.manual_seed(0)
        cls = SegmentationModel if "-seg" in cfg else DetectionModel
        model = cls(cfg, verbose=False).eval()
        return Built(model, (_rand(1, 3, side, side),), yolo_head(model))
    return build


def _yolo_entries(side: int = 640) -> list[Entry]:
    return [Entry(f"yolo/{Path(c).stem}", "yolo", _yolo(c, side))
            for c in ("yolov8n.yaml", "yolov8n-seg.yaml", "yolo11n.yaml")]


# --- torchvision beyond classification ---------------------------------------------

PREDICTOR_NAMES = ("cls_logits", "bbox_pred", "bbox_reg", "cls_score", "bbox_ctrness")


def detection_head(model: nn.Module) -> list[str]:
    """Box/class predictors of a torchvision detector: layers named like predictors,
    and the last conv of every entry of a head's ``module_list`` (SSD)."""
    names = [n for n, m in model.named_modules()
             if n.rsplit(".", 1)[-1] in PREDICTOR_NAMES and any(True for _ in m.parameters())]
    for n, m in model.named_modules():
        if n.endswith("module_list") and isinstance(m, nn.ModuleList):
            for i in range(len(m)):
                names += _last_layer(model, f"{n}.{i}")
    return names


def segmentation_head(model: nn.Module, classes: int) -> list[str]:
    """Every conv of the segmentation heads that outputs ``classes`` channels."""
    return [n for n, m in model.named_modules() if n.split(".")[0] in ("classifier", "aux_classifier")
            and isinstance(m, nn.Conv2d) and m.out_channels == classes]


def _tv_model(name: str) -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    kw = {"weights_backbone": None} if name not in ("r3d_18", "r2plus1d_18", "s3d", "mvit_v2_s",
                                                     "swin3d_t", "raft_small") else {}
    return torchvision.models.get_model(name, weights=None, **kw).eval()


def _tv_seg(name: str, side: int = 520) -> Callable[[], Built]:
    def build() -> Built:
        model = _tv_model(name)
        return Built(model, (_rand(1, 3, side, side),), segmentation_head(model, 21))
    return build


def _tv_det(name: str, side: int, whole: bool) -> Callable[[], Built]:
    def build() -> Built:
        model = _tv_model(name)
        if whole:
            return Built(model, ([_rand(3, side, side)],), detection_head(model), "whole model")
        return Built(model.backbone, (_rand(1, 3, side, side),), [], "backbone+FPN")
    return build


def _tv_video(name: str, side: int, frames: int = 16) -> Callable[[], Built]:
    def build() -> Built:
        model = _tv_model(name)
        return Built(model, (_rand(1, 3, frames, side, side),), head_names(model))
    return build


def _raft(side: int = 224) -> Built:
    model = _tv_model("raft_small")
    return Built(model, (_rand(1, 3, side, side), _rand(1, 3, side, side)), [])


def _tv_entries() -> list[Entry]:
    out = [Entry(f"tv/{n}", "tv-seg", _tv_seg(n)) for n in
           ("fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")]
    for n, side in (("fasterrcnn_mobilenet_v3_large_fpn", 800), ("retinanet_resnet50_fpn", 800),
                    ("ssdlite320_mobilenet_v3_large", 320), ("fcos_resnet50_fpn", 800)):
        out.append(Entry(f"tv/{n}", "tv-det", _tv_det(n, side, True),
                         fallback=_tv_det(n, side, False)))
    out += [Entry(f"tv/{n}", "tv-video", _tv_video(n, side))
            for n, side in (("r3d_18", 112), ("r2plus1d_18", 112), ("s3d", 224),
                            ("mvit_v2_s", 224), ("swin3d_t", 224))]
    out.append(Entry("tv/raft_small", "tv-flow", _raft))
    return out


# --- the suite ----------------------------------------------------------------------

def entries(refresh_timm: bool = False) -> list[Entry]:
    """Every suite entry, timm first."""
    timm_list = [Entry(f"timm/{p['model']}", f"timm:{fam}", _timm(p["model"]))
                 for fam, p in sorted(timm_picks(refresh_timm).items())]
    return timm_list + _hf_entries() + _yolo_entries() + _tv_entries()


def entry(name: str) -> Entry:
    """The entry named ``name`` (a timm model not among the picks is built all the same)."""
    if name.startswith("timm/"):
        arch = name[5:]
        picked = {p["model"]: fam for fam, p in timm_picks().items()}
        return Entry(name, f"timm:{picked.get(arch, '?')}", _timm(arch))
    for e in _hf_entries() + _yolo_entries() + _tv_entries():
        if e.name == name:
            return e
    raise KeyError(f"{name!r} is not in the real-world suite (see python bench/realworld_models.py)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--refresh-timm", action="store_true", help="re-pick the timm variants")
    a = p.parse_args(argv)
    for e in entries(a.refresh_timm):
        print(f"{e.name}\t{e.family}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
