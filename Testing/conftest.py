"""Shared fixtures: paths to ../shared/data and small phantoms."""
from __future__ import annotations

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
