from __future__ import annotations

import numpy as np

from nextqsm.dipole import forward_field
from nextqsm.geometry import oblique_affine
from nextqsm.phantom import CHI, make_phantom


def test_deterministic_and_consistent(small_phantom):
    p2 = __import__("nextqsm.phantom", fromlist=["make_phantom"]).make_phantom(
        shape=(64, 64, 56), voxel_size=(3.5, 3.5, 3.5), seed=1)
    np.testing.assert_array_equal(small_phantom.chi, p2.chi)
    p = small_phantom
    m = p.mask
    # fields are the forward model of the chi they come from
    np.testing.assert_allclose(p.local_field[m], forward_field(p.chi, p.voxel_size, p.b0_dir)[m], atol=1e-5)
    # external sources (air, bone) make a background field that dominates the local field
    bg = p.background_field[m]
    lf = p.local_field[m]
    assert np.std(bg) > 3 * np.std(lf)
    # air and bone never inside the brain mask; deep grey nuclei are
    assert not np.isin(p.seg[m], (13, 14)).any()
    for lab in (1, 2, 3, 7, 11):
        assert (p.seg[m] == lab).any(), lab
    assert np.isclose(np.median(p.chi[p.seg == 2]), CHI[2], atol=0.02)


def test_oblique_phantom_uses_tilted_b0():
    a = oblique_affine((3.5, 3.5, 3.5), 25, "x", shape=(48, 48, 40))
    p = make_phantom(shape=(48, 48, 40), voxel_size=(3.5, 3.5, 3.5), affine=a)
    assert np.isclose(np.degrees(np.arccos(p.b0_dir[2])), 25, atol=1e-6)
