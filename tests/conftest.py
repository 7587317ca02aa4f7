"""Shared test settings: one torch thread (CI has 2 shared cores; tiny ops are
slower with more) and a fixed seed before every test."""
from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fixed_seed() -> None:
    torch.manual_seed(0)
