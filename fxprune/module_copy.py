"""A deep copy of a module tree that does what ``copy.deepcopy`` does, a few times faster.

``copy.deepcopy`` walks every module through the generic reduce protocol: about eighty
Python calls per module (its dozen hook dicts, flags and tuples each go through
``deepcopy``), which made the copy the largest stage of ``prune`` on small nets.
Here a module whose class keeps the default protocol (``nn.Module``'s
``__getstate__``/``__setstate__``, no ``__deepcopy__`` or ``__reduce__`` of its own) is
rebuilt directly: ``cls.__new__``, its state with the children, parameters and
buffers copied by this function, values that cannot be mutated shared, empty hook
dicts made fresh, and everything else handed to ``copy.deepcopy`` with the shared
memo (so aliases and ties stay aliased). A module with its own protocol
(``GraphModule``) goes through ``copy.deepcopy`` with its plain children already in
the memo.
"""
from __future__ import annotations

import copy
import copyreg
from collections import OrderedDict
from typing import Any, Iterable

import torch
from torch import nn

__all__ = ["deep_copy_module", "copy_named"]

_IMMUTABLE = frozenset((int, float, bool, complex, str, bytes, type(None), torch.dtype,
                        torch.device, torch.layout, torch.memory_format, type))
_TENSOR_DICTS = ("_parameters", "_buffers")


def _plain(cls: type) -> bool:
    """Whether ``copy.deepcopy`` would copy an instance as ``__setstate__(deepcopy(state))``
    with the state nn.Module's ``__getstate__`` gives."""
    return (cls.__getstate__ is nn.Module.__getstate__
            and cls.__reduce_ex__ is object.__reduce_ex__
            and cls.__reduce__ is object.__reduce__
            and getattr(cls, "__deepcopy__", None) is None
            and cls not in copyreg.dispatch_table
            and not any(getattr(k, "__slots__", ()) for k in cls.__mro__[:-1]))


def _is_immutable(v: Any) -> bool:
    t = type(v)
    return t in _IMMUTABLE or (t is tuple and all(_is_immutable(x) for x in v))


def _copy_value(v: Any, memo: dict[int, Any]) -> Any:
    if _is_immutable(v):
        return v
    t = type(v)
    if (t is dict or t is OrderedDict) and not v:  # the hook dicts, nearly always empty
        return t()
    return copy.deepcopy(v, memo)


def _copy(m: nn.Module, memo: dict[int, Any]) -> nn.Module:
    found = memo.get(id(m))
    if found is not None:
        return found
    cls = type(m)
    if not _plain(cls):
        return copy.deepcopy(m, memo)
    new = cls.__new__(cls)
    memo[id(m)] = new
    state = m.__getstate__()
    for key, value in state.items():
        if key == "_modules":
            state[key] = type(value)((k, None if c is None else _copy(c, memo))
                                     for k, c in value.items())
        elif key in _TENSOR_DICTS:
            state[key] = type(value)((k, copy.deepcopy(t, memo)) for k, t in value.items())
        else:
            state[key] = _copy_value(value, memo)
    new.__setstate__(state)
    return new


def deep_copy_module(module: nn.Module, memo: dict[int, Any] | None = None) -> nn.Module:
    """``copy.deepcopy(module, memo)``, with every plain submodule copied the fast way."""
    memo = {} if memo is None else memo
    for m in module.modules():  # plain children first, so a custom protocol finds them
        if m is not module and _plain(type(m)):
            _copy(m, memo)
    return _copy(module, memo)


def copy_named(root: nn.Module, names: Iterable[str], memo: dict[int, Any]) -> nn.Module:
    """A plain module holding deep copies of the attributes ``names`` (qualified) of
    ``root`` at the same names, as ``fx.GraphModule(root, graph)`` lays them out:
    the modules on the way are plain containers, a tensor that is not a Parameter is a
    buffer. One memo for all, so shared modules and tied tensors stay shared."""
    holder, made = nn.Module(), set()  # made: ids of the plain containers made here
    for name in names:
        *path, field = name.split(".")
        src, dst = root, holder
        for atom in path:
            src = getattr(src, atom)
            nxt = dst._modules.get(atom)
            if nxt is None:
                nxt = nn.Module()
                made.add(id(nxt))
                dst.add_module(atom, nxt)
            dst = nxt
        there = dst._modules.get(field)
        if (there is not None and id(there) not in made) or field in dst._parameters \
                or field in dst._buffers:
            continue  # already there, inside a module copied whole
        value = getattr(src, field)
        if isinstance(value, nn.Module):
            dst.add_module(field, _copy(value, memo))
        elif isinstance(value, nn.Parameter):
            dst.register_parameter(field, copy.deepcopy(value, memo))
        elif isinstance(value, torch.Tensor):
            dst.register_buffer(field, copy.deepcopy(value, memo))
        else:
            setattr(dst, field, copy.deepcopy(value, memo))
    return holder
