"""Surgery helpers shared by every rewrite: swap a submodule by qualified name,
replace a parameter or buffer everywhere it is aliased, index-select a tensor
along several dims, and the lint/recompile/shape-check epilogue."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.fx as fx

from .module_copy import copy_named, deep_copy_module
from .module_state import MODULE_STATE
from .rules.purity import eliminate_dead_pure_nodes

__all__ = ["copy_module", "copy_targets", "submodule", "set_submodule", "replace_tensor", "select", "finish"]


def submodule(root: torch.nn.Module, qualname: str) -> torch.nn.Module:
    """``root.get_submodule(qualname)`` by walking the ``_modules`` dicts (several times
    faster: shrink looks up every layer a few times); falls back to it for anything else."""
    m = root
    try:
        for atom in qualname.split(".") if qualname else ():
            m = m._modules[atom]
    except (KeyError, AttributeError):  # not a registered child (or a None one)
        return root.get_submodule(qualname)
    return m if m is not None else root.get_submodule(qualname)


def _owner(root: torch.nn.Module, qualname: str) -> tuple[torch.nn.Module, str]:
    parent, _, attr = qualname.rpartition(".")
    return submodule(root, parent), attr


def set_submodule(root: torch.nn.Module, qualname: str, module: torch.nn.Module) -> None:
    owner, attr = _owner(root, qualname)
    setattr(owner, attr, module)


def replace_tensor(root: torch.nn.Module, names: Iterable[str], value: torch.Tensor) -> None:
    """Point every alias ``names`` of one parameter/buffer at ``value``: one object for all of
    them, so a tie (``out.weight = emb.weight``) stays one Parameter."""
    shared: torch.Tensor | None = None
    for name in names:
        owner, attr = _owner(root, name)
        if attr in owner._parameters:
            if shared is None:
                old = owner._parameters[attr]
                shared = value if isinstance(value, torch.nn.Parameter) else \
                    torch.nn.Parameter(value, requires_grad=old.requires_grad)
            owner._parameters[attr] = shared
        elif attr in owner._buffers:
            owner._buffers[attr] = value
        else:
            setattr(owner, attr, value)


def select(t: torch.Tensor, keep: dict[int, np.ndarray]) -> torch.Tensor:
    """Index-select ``t`` along each dim in ``keep`` (a new tensor, never a view)."""
    out = t.detach()
    for d, idx in keep.items():  # index_select allocates: no clone needed after it
        out = out.index_select(d, torch.as_tensor(idx, dtype=torch.long, device=t.device))
    return out if keep else out.clone()


def finish(gm: fx.GraphModule) -> fx.GraphModule:
    """Every rewrite ends here: drop dead pure nodes, lint, recompile.

    Not ``graph.eliminate_dead_code()``: it deletes in-place calls whose result is
    unused (``y.relu_()``), which mutate a live tensor (see rules/purity.py)."""
    eliminate_dead_pure_nodes(gm)
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm


def _copy_memo(module: torch.nn.Module, skip: Iterable[torch.Tensor]) -> dict[int, object]:
    """The deepcopy memo both copies start from: detached copies of cached non-leaf
    tensors, and empty placeholders for the tensors in ``skip``."""
    memo: dict[int, object] = {}
    for m in module.modules():
        for key, value in vars(m).items():
            if key in MODULE_STATE:
                continue
            for t in (value.values() if isinstance(value, dict) else (value,)):
                if isinstance(t, torch.Tensor) and not t.is_leaf:
                    memo[id(t)] = t.detach().clone()
    for t in skip:
        if id(t) not in memo:
            empty = torch.empty(0, dtype=t.dtype, device=t.device)
            memo[id(t)] = (torch.nn.Parameter(empty, requires_grad=t.requires_grad)
                           if isinstance(t, torch.nn.Parameter) else empty)
    return memo


def _named_tensors(module: torch.nn.Module, names: Iterable[str]) -> list[torch.Tensor]:
    names = set(names)
    if not names:
        return []
    return [t for name, t in [*module.named_parameters(remove_duplicate=False),
                              *module.named_buffers(remove_duplicate=False)] if name in names]


def copy_module(module: torch.nn.Module, skip: Iterable[str] = (),
                share: Iterable[torch.Tensor] = ()) -> torch.nn.Module:
    """``copy.deepcopy(module)``, minus the data of the parameters and buffers named in
    ``skip`` (empty placeholders the caller is about to replace: no point copying what
    shrink index-selects from the original anyway). The tensors in ``share`` are not
    copied at all: the copy holds the same objects (the oracle's read-only weights).

    Also copies modules caching computed tensors as plain attributes (timm's TinyViT keeps
    an attention-bias cache of non-leaf tensors, which ``Tensor.__deepcopy__`` refuses):
    those are copied detached. The copy itself is module_copy.py's (deepcopy's result,
    a few times faster)."""
    memo = _copy_memo(module, _named_tensors(module, skip))
    memo.update((id(t), t) for t in share)
    return deep_copy_module(module, memo)


def copy_targets(root: torch.nn.Module, targets: Iterable[str],
                 skip: Iterable[torch.Tensor] = ()) -> torch.nn.Module:
    """A new module holding copies (as ``copy_module`` makes them, the tensors in ``skip``
    as empty placeholders) of what ``targets`` name in ``root``, at the same qualified
    names: what a GraphModule built on it keeps, and nothing else is copied."""
    return copy_named(root, targets, _copy_memo(root, skip))
