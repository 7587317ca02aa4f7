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
from typing import Any

import torch
from torch import nn

__all__ = ["deep_copy_module"]

_IMMUTABLE = (int, float, bool, complex, str, bytes, type(None), torch.dtype, torch.device,
              torch.layout, torch.memory_format, type)
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
    if isinstance(v, tuple) and type(v) is tuple:
        return all(_is_immutable(x) for x in v)
    return type(v) in _IMMUTABLE


def _copy_value(v: Any, memo: dict[int, Any]) -> Any:
    if _is_immutable(v):
        return v
    if type(v) in (dict, OrderedDict) and not v:  # the hook dicts, nearly always empty
        return type(v)()
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
