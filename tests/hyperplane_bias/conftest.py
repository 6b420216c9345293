"""Fixtures of the hyperplane_bias tests (tiny sizes: every test runs in about a second)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    return torch.randn(96, 1, 8, 8, generator=g)
