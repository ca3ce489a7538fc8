"""Spatial phase unwrapping: Laplacian (FFT; Schofield & Zhu 2003) and quality-guided (scikit-image).

All functions take wrapped phase in radians (3D, (i, j, k)) and return unwrapped phase in radians.
NaN/Inf voxels are treated as outside the mask (set to 0 on output).

* :func:`laplacian_unwrap` solves  Laplacian(phi) = cos(p) L(sin p) - sin(p) L(cos p)  by FFT
  (discrete 7-point Laplacian, periodic after mirror padding). Robust to noise and to
  disconnected regions, but not congruent: the result differs from the true unwrapped phase by
  a smooth function. ``congruent=True`` snaps it to ``p + 2 pi n`` (exact where the Laplacian
  estimate is within pi of the truth).
* :func:`region_unwrap` is scikit-image's ``unwrap_phase`` (Herraez et al. 2002 / Abdul-Rahman
  et al. 2007: quality-guided unwrapping sorted by edge reliability, the same family as ROMEO),
  restricted to the mask, then connected regions aligned to the Laplacian solution.
  It is exact (congruent) wherever the phase is well sampled; measured in ``Testing/test_phase.py``
  and ``benchmarks/results_tgv_phase.md``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

Vec3 = Sequence[float]
TWO_PI = 2.0 * np.pi


def wrap(x: np.ndarray) -> np.ndarray:
    """Wrap to [-pi, pi)."""
    return (np.asarray(x) + np.pi) % TWO_PI - np.pi


def _clean(phase: np.ndarray, mask: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(phase, dtype=np.float64)
    good = np.isfinite(p)
    m = good if mask is None else (np.asarray(mask, bool) & good)
    return np.where(good, p, 0.0), m


def _lap_eigen(shape, voxel_size) -> np.ndarray:
    """Eigenvalues of the periodic 7-point Laplacian on ``shape`` [1/mm^2] (FFT order)."""
    out = 0.0
    for ax, (n, h) in enumerate(zip(shape, voxel_size)):
        k = np.fft.fftfreq(int(n)).reshape([-1 if a == ax else 1 for a in range(3)])
        out = out + (2.0 * np.cos(TWO_PI * k) - 2.0) / float(h) ** 2
    return np.asarray(out)


def _lap_fft(x: np.ndarray, eig: np.ndarray) -> np.ndarray:
    return sfft.ifftn(sfft.fftn(x, workers=-1) * eig, workers=-1).real


def laplacian_unwrap(phase: np.ndarray, voxel_size: Vec3 = (1, 1, 1), mask: Optional[np.ndarray] = None,
                     pad: int = 8, congruent: bool = False) -> np.ndarray:
    """Laplacian unwrapping by FFT [rad]; ``mask`` (optional) only limits where the result is returned.

    Mirror padding by ``pad`` voxels makes the FFT periodic without edge jumps. The mean inside
    the mask is matched to the wrapped phase's circular mean, so the result stays near the data.
    """
    p, m = _clean(phase, mask)
    pp = np.pad(p, pad, mode="reflect") if pad > 0 else p
    eig = _lap_eigen(pp.shape, voxel_size)
    s, c = np.sin(pp), np.cos(pp)
    lap = c * _lap_fft(s, eig) - s * _lap_fft(c, eig)
    inv = np.zeros_like(eig)
    nz = eig != 0
    inv[nz] = 1.0 / eig[nz]
    u = sfft.ifftn(sfft.fftn(lap, workers=-1) * inv, workers=-1).real
    if pad > 0:
        u = u[pad:-pad, pad:-pad, pad:-pad]
    if m.any():
        # align the free constant: integer-free shift to the wrapped data
        off = np.angle(np.mean(np.exp(1j * (p[m] - u[m]))))
        u = u + off
    if congruent:
        u = p + TWO_PI * np.round((u - p) / TWO_PI)
    return np.where(m, u, 0.0).astype(np.float32) if mask is not None else np.where(np.isfinite(phase), u, 0).astype(np.float32)


def region_unwrap(phase: np.ndarray, mask: Optional[np.ndarray] = None, voxel_size: Vec3 = (1, 1, 1),
                  seed: int = 0) -> np.ndarray:
    """Quality-guided unwrapping (scikit-image ``unwrap_phase``) inside ``mask`` [rad].

    Each connected component of the mask is unwrapped on its own by scikit-image; the components
    are then shifted by multiples of 2 pi to agree with the Laplacian solution (which links them).
    """
    from skimage.restoration import unwrap_phase

    p, m = _clean(phase, mask)
    p = wrap(p)
    if not m.any():
        return np.zeros(p.shape, np.float32)
    masked = np.ma.masked_array(p, mask=~m)
    u = np.asarray(unwrap_phase(masked, rng=seed).filled(0.0), dtype=np.float64)
    lab, n = ndimage.label(m)
    ref = laplacian_unwrap(p, voxel_size, m)  # links components; fixes the free 2 pi n of each
    for i in range(1, n + 1):
        r = lab == i
        u[r] += TWO_PI * np.round(np.median(ref[r] - u[r]) / TWO_PI)
    return np.where(m, u, 0.0).astype(np.float32)


UNWRAPPERS = {"laplacian": "Laplacian (FFT), not congruent",
              "laplacian-congruent": "Laplacian (FFT), snapped to the wrapped phase + 2 pi n",
              "region": "quality-guided region growing (scikit-image unwrap_phase) in the mask"}


def unwrap(phase: np.ndarray, method: str = "region", mask: Optional[np.ndarray] = None,
           voxel_size: Vec3 = (1, 1, 1)) -> np.ndarray:
    """Dispatch by name (see :data:`UNWRAPPERS`). Returns unwrapped phase [rad], 0 outside mask/NaN."""
    from ..errors import QSMInputError

    if method == "laplacian":
        return laplacian_unwrap(phase, voxel_size, mask)
    if method == "laplacian-congruent":
        return laplacian_unwrap(phase, voxel_size, mask, congruent=True)
    if method in ("region", "skimage"):
        return region_unwrap(phase, mask, voxel_size)
    raise QSMInputError("unwrapper", f"unknown unwrapping method {method!r}", f"choose one of {', '.join(UNWRAPPERS)}")
