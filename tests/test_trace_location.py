"""TraceError names where tracing failed and advises frontend="export" first, leaf_modules last.

torch.fx can fail before any of the model's code runs: a forward behind a decorator with
``*args, **kwargs`` (Hugging Face's ``can_return_tuple``) raises ``co_varnames is too
small`` inside torch, where no frame is the user's. The error then names the forward.
"""
from __future__ import annotations

import functools
import inspect

import pytest
import torch
from torch import nn

import fxprune
from fxprune.errors import TraceError


def _passes_everything(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)
    return wrapper


class DecoratedForward(nn.Module):
    """fx cannot re-sign this forward: it fails in torch before the body runs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    @_passes_everything
    def forward(self, x, mask=None, scale=1.0, **kwargs):
        return self.conv(x)


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # the line to name
            return x
        return -x


def _message(model: nn.Module) -> str:
    with pytest.raises(TraceError) as info:
        fxprune.trace(model, torch.randn(1, 3, 4, 4))
    return str(info.value)


def test_failure_inside_torch_names_the_forward() -> None:
    msg = _message(DecoratedForward())
    line = inspect.unwrap(DecoratedForward.forward).__code__.co_firstlineno
    assert "<unknown location>" not in msg
    assert f"test_trace_location.py:{line}, in DecoratedForward.forward" in msg


def test_failure_in_user_code_names_the_line() -> None:
    msg = _message(DataDependent())
    line = inspect.getsourcelines(DataDependent.forward)[1] + 1
    assert f"test_trace_location.py:{line}" in msg and "if x.sum() > 0" in msg


@pytest.mark.parametrize("model", [DecoratedForward, DataDependent])
def test_advice_puts_export_first_and_leaves_last(model) -> None:
    msg = _message(model())
    first, last = msg.index('frontend="export"'), msg.index("leaf_modules")
    assert first < msg.index("concrete_args") < last


def test_proxy_class_name_in_errors_is_torchs() -> None:
    """The tracer's own Proxy subclass (it records ``+=`` in place) keeps torch's name."""

    class SetItem(nn.Module):
        def forward(self, x):
            x[0] = 1.0
            return x

    assert "'Proxy' object does not support item assignment" in _message(SetItem())
