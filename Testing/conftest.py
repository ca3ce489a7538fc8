"""Shared fixtures: paths to ../shared/data and small phantoms."""
from __future__ import annotations

import math

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(sub: str) -> Path:
    """Path under ../shared/data, skipping the test with a clear message when it is missing."""
    p = SHARED_DATA / sub
    if not p.exists():
        pytest.skip(f"shared data not found: {p} (tests that use real data need ../shared/data next to the repo)")
    return p


@pytest.fixture(scope="session")
def small_phantom():
    from nextqsm.phantom import make_phantom

    return make_phantom(shape=(64, 64, 56), voxel_size=(3.5, 3.5, 3.5), seed=1)


OBLIQUE_25 = (math.sin(math.radians(25)), 0.0, math.cos(math.radians(25)))
"""Unit B0 tilted 25 degrees from k towards i (voxel axes)."""


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for the module: on a shared 2-core runner OpenMP spin-waiting makes 2 threads
    ~10x costlier in CPU time for these small solves."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
