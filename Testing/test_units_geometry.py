from __future__ import annotations

import math

import numpy as np
import pytest

from nextqsm import units
from nextqsm.errors import QSMInputError
from nextqsm.geometry import b0_direction, oblique_affine, voxel_size


def test_round_trips_and_values():
    # 1 ppm at 3 T = 127.728 Hz; at TE 20 ms that is 2*pi*127.728*0.02 rad
    assert math.isclose(units.ppm_to_hz(1.0, 3.0), 127.728, rel_tol=1e-9)
    assert math.isclose(units.ppm_to_rad(1.0, 0.02, 3.0), 2 * math.pi * 127.728 * 0.02, rel_tol=1e-9)
    x = np.linspace(-1, 1, 5)
    np.testing.assert_allclose(units.rad_to_ppm(units.ppm_to_rad(x, 0.025, 2.89), 0.025, 2.89), x, atol=1e-12)
    np.testing.assert_allclose(units.hz_to_ppm(units.ppm_to_hz(x, 7.0), 7.0), x)
    assert units.te_to_seconds(20) == 0.02 and units.te_to_seconds(0.02) == 0.02


def test_bad_units_inputs():
    with pytest.raises(QSMInputError, match="TE"):
        units.rad_to_hz(1.0, 0.0)
    with pytest.raises(QSMInputError, match="B0"):
        units.hz_per_ppm(-3)


def test_b0_direction_from_affine():
    assert np.allclose(b0_direction(np.diag([1, 1, 2, 1])), (0, 0, 1))
    a = oblique_affine((1, 1, 2), 25, "x")
    b = np.array(b0_direction(a))
    assert np.isclose(np.degrees(np.arccos(b[2])), 25, atol=1e-6)
    # voxel axes -> world: R @ b must be scanner z
    r = a[:3, :3] / np.linalg.norm(a[:3, :3], axis=0)
    assert np.allclose(r @ b, (0, 0, 1))
    assert np.allclose(voxel_size(a), (1, 1, 2))
    # LAS (left-handed, flipped i) keeps B0 along k
    las = np.diag([-1.0, 1, 1, 1])
    assert np.allclose(b0_direction(las), (0, 0, 1))
    assert np.allclose(b0_direction(las, override=(0, 0, 2)), (0, 0, 1))


def test_b0_direction_bad():
    with pytest.raises(QSMInputError, match="B0 direction"):
        b0_direction(None, None)
    with pytest.raises(QSMInputError, match="B0"):
        b0_direction(np.eye(4), override=(0, 0, 0))
    with pytest.raises(QSMInputError, match="voxel size"):
        voxel_size(np.diag([0, 1, 1, 1]))
