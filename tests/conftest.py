"""Shared fixtures: tiny random Gemma 3 / Gemma 2 models (built in ``tiny.py``) and the embedded one."""

from __future__ import annotations

import os

import pytest
import torch
from tiny import tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def one_thread():
    """One torch thread: for tiny tensors, OpenMP hand-offs cost more than the maths."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=["gemma3", "gemma2"])
def model(request):
    return tiny_model(request.param)


@pytest.fixture
def gemma3():
    return tiny_model("gemma3")


@pytest.fixture(scope="session")
def embedded():
    """The embedded Gemma 3 270M (dequantised once into the gsnb cache)."""
    import gsnb

    return gsnb.load_model(device="cpu")
