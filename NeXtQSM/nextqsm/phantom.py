"""The project's own simulated head with known susceptibility (no third-party data).

Tissue classes use the QSM-CI / challenge-2.0 segmentation labels so that the challenge
metrics (tissue, blood, deep-grey NRMSE, deep-grey slope, calcification) apply directly:

==  ====================  =============  ==  ===================  ==========
id  class                 chi [ppm]      id  class                chi [ppm]
==  ====================  =============  ==  ===================  ==========
1   caudate               0.07           9   grey matter          0.03
2   globus pallidus       0.17           10  CSF                  0.00
3   putamen               0.06           11  blood (veins)        0.35
4   red nucleus           0.12           13  bone (skull)         -2.0
5   dentate nucleus       0.10           14  air (sinuses, ears)  9.2
6   substantia nigra      0.14           15  soft tissue/muscle   -0.02
7   thalamus              0.04           16  calcification        -0.4
8   white matter          -0.04
==  ====================  =============  ==  ===================  ==========

Values are relative to tissue water (air ~ +9.2 ppm relative to tissue). Grey and white
matter carry a smooth low-amplitude texture. Everything is deterministic from ``seed``.
Geometry: voxel axes i = left->right, j = posterior->anterior, k = inferior->superior
(RAS-like); the affine may be oblique, in which case B0 is tilted in voxel coordinates.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from .dipole import forward_field
from .geometry import b0_direction, check_voxel_size

LABELS = {1: "caudate", 2: "globus pallidus", 3: "putamen", 4: "red nucleus", 5: "dentate nucleus",
          6: "substantia nigra", 7: "thalamus", 8: "white matter", 9: "grey matter", 10: "CSF",
          11: "blood", 13: "bone", 14: "air", 15: "soft tissue", 16: "calcification"}
CHI = {1: 0.07, 2: 0.17, 3: 0.06, 4: 0.12, 5: 0.10, 6: 0.14, 7: 0.04, 8: -0.04, 9: 0.03, 10: 0.0,
       11: 0.35, 13: -2.0, 14: 9.2, 15: -0.02, 16: -0.4}


@dataclass
class Phantom:
    """Simulated head. Arrays are float32 (i, j, k); fields and chi in ppm.

    chi: brain susceptibility (zero outside ``mask``); chi_full: whole head incl. bone/air;
    total_field = D*chi_full and local_field = D*chi, both zero outside ``mask``;
    seg: labels of :data:`LABELS` (whole head); magnitude: a plausible GRE magnitude (a.u.).
    """

    chi: np.ndarray
    chi_full: np.ndarray
    total_field: np.ndarray
    local_field: np.ndarray
    mask: np.ndarray
    seg: np.ndarray
    magnitude: np.ndarray
    affine: np.ndarray
    voxel_size: tuple[float, float, float]
    b0_dir: tuple[float, float, float]
    labels: dict = field(default_factory=lambda: dict(LABELS))

    @property
    def background_field(self) -> np.ndarray:
        return self.total_field - self.local_field


def _ell(c: Sequence[np.ndarray], center, radii, angle_deg: float = 0.0) -> np.ndarray:
    """Boolean ellipsoid on mm coordinate grids ``c``; optional rotation about k (axial plane)."""
    x, y, z = (ci - ce for ci, ce in zip(c, center))
    if angle_deg:
        t = np.deg2rad(angle_deg)
        x, y = np.cos(t) * x + np.sin(t) * y, -np.sin(t) * x + np.cos(t) * y
    return (x / radii[0]) ** 2 + (y / radii[1]) ** 2 + (z / radii[2]) ** 2 <= 1.0


def _tube(c, p0, p1, radius: float) -> np.ndarray:
    """Boolean cylinder segment from p0 to p1 (mm) of ``radius`` mm."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    L2 = float(d @ d)
    rel = [ci - p for ci, p in zip(c, p0)]
    t = np.clip((rel[0] * d[0] + rel[1] * d[1] + rel[2] * d[2]) / L2, 0, 1)
    dist2 = sum((r - t * dd) ** 2 for r, dd in zip(rel, d))
    return dist2 <= radius ** 2


def make_phantom(shape: Sequence[int] = (128, 128, 112), voxel_size: Sequence[float] = (1.75, 1.75, 1.75),
                 seed: int = 0, affine: np.ndarray | None = None, b0_dir: Sequence[float] | None = None,
                 texture: float = 0.01, noise_snr: float | None = None) -> Phantom:
    """Build the head phantom on a grid of ``shape`` voxels of ``voxel_size`` mm.

    ``affine`` defaults to a RAS scaling centred on the grid; B0 in voxel coordinates comes
    from the affine unless ``b0_dir`` is given. ``texture`` is the SD (ppm) of smooth
    GM/WM texture. ``noise_snr`` adds Gaussian noise to the total field with SD =
    max|local field| / SNR. The geometry scales with the field of view (a head ~180 mm long).
    """
    shape = tuple(int(s) for s in shape)
    vs = check_voxel_size(voxel_size, "phantom voxel size")
    rng = np.random.default_rng(seed)
    if affine is None:
        affine = np.diag([*vs, 1.0])
        affine[:3, 3] = -np.asarray(vs) * (np.asarray(shape) - 1) / 2.0
    bdir = b0_direction(affine, b0_dir)
    # mm coordinates centred on the grid (phantom frame = voxel axes)
    c = np.meshgrid(*[(np.arange(n) - (n - 1) / 2.0) * d for n, d in zip(shape, vs)], indexing="ij", sparse=True)
    jit = lambda s=2.0: rng.normal(0, s, 3)  # noqa: E731  small deterministic position jitter, mm

    seg = np.zeros(shape, np.int16)
    head = _ell(c, (0, 0, -5), (74, 92, 92))
    seg[head] = 15
    skull_outer = _ell(c, (0, 0, 2), (68, 86, 80))
    seg[skull_outer] = 13
    brain = _ell(c, (0, 2, 14), (60, 78, 58))
    csf_outer = _ell(c, (0, 2, 14), (63, 81, 62))
    seg[csf_outer] = 10
    seg[brain] = 9
    wm = _ell(c, (0, 2, 16), (50, 67, 47))
    seg[wm] = 8
    # cerebellum (GM with WM core) and brainstem
    for sx in (-1, 1):
        cb = _ell(c, (sx * 24, -52, -34), (26, 20, 16)) & brain
        seg[cb] = 9
        seg[_ell(c, (sx * 20, -50, -32), (12, 9, 7)) & brain] = 8
        seg[_ell(c, (sx * 14, -50, -30) + jit(1), (5, 4, 3.5))] = 5  # dentate
    seg[_ell(c, (0, -20, -30), (11, 12, 24)) & brain] = 8  # brainstem
    # ventricles
    for sx in (-1, 1):
        seg[_ell(c, (sx * 9, 8, 20), (6, 28, 9), angle_deg=sx * 8)] = 10
    seg[_ell(c, (0, -6, 4), (2, 10, 6))] = 10  # third ventricle
    # deep grey nuclei (bilateral)
    for sx in (-1, 1):
        seg[_ell(c, (sx * 15, 22, 18) + jit(), (5, 10, 6), angle_deg=-sx * 10)] = 1   # caudate head
        seg[_ell(c, (sx * 25, 8, 6) + jit(), (5, 14, 9), angle_deg=-sx * 8)] = 3     # putamen
        seg[_ell(c, (sx * 19, 4, 3) + jit(1), (3, 8, 5), angle_deg=-sx * 8)] = 2     # globus pallidus
        seg[_ell(c, (sx * 10, -12, 8) + jit(), (8, 13, 8))] = 7                    # thalamus
        seg[_ell(c, (sx * 5, -16, -10) + jit(1), (3, 3, 3))] = 4                   # red nucleus
        seg[_ell(c, (sx * 10, -14, -14) + jit(1), (3, 7, 2.5), angle_deg=sx * 30)] = 6  # substantia nigra
    # veins: superior sagittal sinus, straight sinus, and a few medullary/cortical veins
    seg[_tube(c, (0, 70, 56), (0, -60, 52), 3.0) & csf_outer] = 11
    seg[_tube(c, (0, -25, 20), (0, -66, 40), 2.2) & brain] = 11
    for _ in range(4):
        p0 = rng.uniform([-40, -40, 0], [40, 40, 30])
        p1 = p0 + rng.normal(0, 14, 3)
        seg[_tube(c, p0, p1, 1.3) & wm] = 11
    # calcification (small, in white matter)
    seg[_ell(c, (30, 30, 28) + jit(1), (2.5, 2.5, 2.5))] = 16
    # air cavities: frontal and sphenoid sinuses, mastoid/ear canals, and outside the skull base
    seg[_ell(c, (0, 80, -24) + jit(1), (14, 6, 9))] = 14
    seg[_ell(c, (0, 30, -52) + jit(1), (10, 10, 7))] = 14
    for sx in (-1, 1):
        seg[_ell(c, (sx * 62, -12, -40) + jit(1), (6, 8, 6))] = 14
    seg[_ell(c, (0, 66, -60), (20, 16, 12))] = 14  # nasal cavity

    chi_full = np.zeros(shape, np.float32)
    for lab, val in CHI.items():
        chi_full[seg == lab] = val
    if texture > 0:
        tex = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=3.0 / np.mean(vs))
        tex *= texture / (tex.std() + 1e-12)
        tissue = np.isin(seg, (8, 9))
        chi_full[tissue] += tex[tissue]
    mask = np.isin(seg, (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 16)) & brain
    mask = ndi.binary_fill_holes(ndi.binary_closing(mask, iterations=2)) & brain & ~np.isin(seg, (13, 14))
    chi = np.where(mask, chi_full, 0).astype(np.float32)
    total = forward_field(chi_full, vs, bdir)
    local = forward_field(chi, vs, bdir)
    if noise_snr:
        sd = float(np.abs(local[mask]).max()) / float(noise_snr)
        total = total + rng.normal(0, sd, shape).astype(np.float32)
    mag_vals = {8: 0.8, 9: 0.65, 10: 0.9, 1: 0.6, 2: 0.45, 3: 0.6, 4: 0.5, 5: 0.5, 6: 0.5, 7: 0.6,
                11: 0.3, 13: 0.05, 14: 0.0, 15: 0.5, 16: 0.2}
    mag = np.zeros(shape, np.float32)
    for lab, v in mag_vals.items():
        mag[seg == lab] = v
    mag = ndi.gaussian_filter(mag, 0.6)
    return Phantom(chi=chi, chi_full=chi_full, total_field=np.where(mask, total, 0).astype(np.float32),
                   local_field=np.where(mask, local, 0).astype(np.float32), mask=mask, seg=seg,
                   magnitude=mag, affine=np.asarray(affine, float), voxel_size=vs, b0_dir=bdir)
