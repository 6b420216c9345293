"""Fixtures of the hyperplane_bias tests (tiny sizes: every test runs in about a second)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    return torch.randn(96, 1, 8, 8, generator=g)
