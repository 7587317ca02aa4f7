"""Snapshot and restore of the plain attributes a forward may write into a module tree.

The forwards fxprune runs must leave no trace in the modules they run: export's
fake-tensor forward and shape propagation on the user's model (frontend_export.py,
shapes.py), shrink's constant fix-up on the pruned module (passes/shrink_constants.py),
and the self-check's forwards on a reduced input (verify.py, oracle_inputs.py). A forward that
caches into ``self`` (Ultralytics' Detect: ``self.anchors = ...``) or into a container
of its own (timm's TinyViT/LeViT: ``self.attention_bias_cache[device] = ...``) would
otherwise keep fake tensors, or tensors of the wrong size, for the user's next call.
"""
from __future__ import annotations

import torch

__all__ = ["MODULE_STATE", "snapshot_attributes", "restore_attributes", "torch_own"]

MODULE_STATE = ("_parameters", "_buffers", "_modules")  # nn.Module's own dicts, not attributes
_MISSING = object()

Snapshot = list[tuple[torch.nn.Module, dict]]


def torch_own(cls: type) -> bool:
    """Whether ``cls`` is one of torch's own layers (``torch.nn.modules``) or graph modules:
    their forwards write nothing into their attributes, nor into their buffers in eval mode
    (BatchNorm updates its statistics only in training). The snapshot skips them (it is
    taken around every prune, and walking a few hundred modules' dicts cost ~1 ms), and
    the self-check's oracle shares their buffers instead of copying them."""
    return cls.__module__.startswith(_TORCH_OWN)


_TORCH_OWN = ("torch.nn.modules.", "torch.fx.graph_module")


def snapshot_attributes(model: torch.nn.Module) -> Snapshot:
    """Each module's plain attributes, with a shallow copy of each dict and list among them
    (modules of torch's own layer classes, which cache nothing, are left out)."""
    return [(m, {k: (v, _contents(v)) for k, v in vars(m).items() if k not in MODULE_STATE})
            for m in model.modules() if not torch_own(type(m))]


def _contents(v: object) -> object:
    return dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else None


def restore_attributes(state: Snapshot) -> None:
    """Put back what :func:`snapshot_attributes` saw: attributes added since are deleted,
    rebound ones rebound, and dicts and lists refilled with their old contents."""
    for m, attrs in state:
        for k in [k for k in vars(m) if k not in MODULE_STATE and k not in attrs]:
            delattr(m, k)
        for k, (v, contents) in attrs.items():
            if vars(m).get(k, _MISSING) is not v:
                m.__dict__[k] = v
            if isinstance(v, dict) and (v.keys() != contents.keys()
                                        or any(v[i] is not contents[i] for i in contents)):
                v.clear()
                v.update(contents)
            elif isinstance(v, list) and (len(v) != len(contents)
                                          or any(a is not b for a, b in zip(v, contents))):
                v[:] = contents
