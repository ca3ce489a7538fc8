"""Physics against analytic truth: the field of a uniformly magnetised sphere."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from nextqsm.dipole import dipole_kernel, dipole_kernel_torch, forward_field, forward_field_torch
from nextqsm.geometry import b0_direction, oblique_affine


def sphere_case(shape, vs, b0, radius_mm=8.0, chi0=0.1, blur_mm=1.0, ss=3):
    """Partial-volume sphere blurred by an isotropic (in mm) Gaussian: still spherically symmetric,
    so outside its support its field is exactly that of a point dipole with the same moment, while
    the blur removes the Nyquist content that a k-space kernel with oblique B0 cannot represent."""
    c = [(np.arange(n) - n // 2) * d for n, d in zip(shape, vs)]
    x, y, z = np.meshgrid(*c, indexing="ij")
    r = np.sqrt(x ** 2 + y ** 2 + z ** 2)
    offs = (np.arange(ss) + 0.5) / ss - 0.5
    chi = np.zeros(shape, np.float32)
    for ox in offs:
        for oy in offs:
            for oz in offs:
                chi += ((x + ox * vs[0]) ** 2 + (y + oy * vs[1]) ** 2 + (z + oz * vs[2]) ** 2) <= radius_mm ** 2
    chi = ndi.gaussian_filter(chi / ss ** 3, [blur_mm / v for v in vs]).astype(np.float32) * chi0
    a_eff = (3 * chi.sum() / chi0 * np.prod(vs) / (4 * np.pi)) ** (1 / 3)  # radius of the same volume
    b = np.asarray(b0) / np.linalg.norm(b0)
    cos = (x * b[0] + y * b[1] + z * b[2]) / np.maximum(r, 1e-9)
    analytic = np.where(r > radius_mm, chi0 / 3 * (a_eff / np.maximum(r, 1e-9)) ** 3 * (3 * cos ** 2 - 1), 0.0)
    return chi, analytic, r


def rel_err_outside(field, analytic, r, radius_mm, factor=1.5):
    sel = r > factor * radius_mm
    return np.linalg.norm(field[sel] - analytic[sel]) / np.linalg.norm(analytic[sel])


@pytest.mark.parametrize("vs,b0", [((1, 1, 1), (0, 0, 1)), ((1, 1, 2), (0, 0, 1)),
                                   ((1, 1, 1), b0_direction(oblique_affine((1, 1, 1), 25, "x"))),
                                   ((0.8, 1.2, 1.5), (0.3, -0.2, 0.9))])
def test_sphere_field_matches_analytic(vs, b0):
    shape = tuple(int(round(64 / v)) for v in vs)  # 64 mm field of view
    chi, analytic, r = sphere_case(shape, vs, b0, radius_mm=8.0)
    f = forward_field(chi, vs, b0, pad=None)
    err = rel_err_outside(f, analytic, r, 8.0)
    assert err <= 0.03, f"relative error beyond 1.5 radii {err:.4f} > 3 %"
    inside = r < 5.0
    assert np.abs(f[inside]).max() < 0.05 * 0.1  # ~0 inside a uniformly magnetised sphere (Lorentz-corrected)


def test_torch_matches_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    chi = rng.standard_normal((20, 24, 18)).astype(np.float32)
    vs, b0 = (1.0, 0.9, 1.3), (0.2, 0.1, 0.97)
    np.testing.assert_allclose(dipole_kernel_torch((20, 24, 18), vs, b0).numpy(), dipole_kernel((20, 24, 18), vs, b0),
                               atol=1e-6)
    ft = forward_field_torch(torch.from_numpy(chi)[None, None], vs, b0).numpy()[0, 0]
    np.testing.assert_allclose(ft, forward_field(chi, vs, b0), atol=1e-4)


def test_oblique_kernel_equals_rotated_computation():
    """B0 along i on chi equals B0 along k on the axis-permuted chi, permuted back."""
    rng = np.random.default_rng(1)
    chi = rng.standard_normal((16, 20, 24)).astype(np.float32)
    vs = (1.0, 1.5, 2.0)
    f_i = forward_field(chi, vs, (1, 0, 0))
    chi_p = np.transpose(chi, (2, 1, 0))  # axis i becomes k
    f_p = forward_field(chi_p, (vs[2], vs[1], vs[0]), (0, 0, 1))
    np.testing.assert_allclose(f_i, np.transpose(f_p, (2, 1, 0)), atol=1e-4)


def test_kernel_properties():
    d = dipole_kernel((32, 32, 32), (1, 1, 1), (0, 0, 1))
    assert d[0, 0, 0] == 0.0  # D(0) = 0 convention
    assert np.isclose(d.max(), 1 / 3, atol=1e-6) and np.isclose(d.min(), -2 / 3, atol=1e-6)
    # anisotropic voxels: kernel depends on physical k, so 2 mm along k halves k_z's extent
    d2 = dipole_kernel((32, 32, 32), (1, 1, 2), (0, 0, 1))
    assert not np.allclose(d, d2)
