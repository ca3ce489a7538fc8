"""Geometry from NIfTI affines: voxel size and the B0 direction in voxel coordinates.

The affine maps voxel indices (i, j, k) to scanner/world mm. B0 lies along the scanner
z axis. With A = R @ diag(voxel_size) the 3x3 part of the affine, the B0 unit vector in
voxel-axis coordinates is b = R^-1 z (R orthonormal up to shear, handled by polar decomposition).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import QSMInputError


def voxel_size(affine: np.ndarray, name: str = "affine") -> tuple[float, float, float]:
    """Voxel size (mm) along i, j, k = column norms of the affine's 3x3 part."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise QSMInputError(name, "the affine is not a finite 4x4 matrix",
                            "fix the NIfTI header (qform/sform) or pass --voxel-size")
    vs = np.linalg.norm(a[:3, :3], axis=0)
    check_voxel_size(vs, name)
    return tuple(float(v) for v in vs)


def check_voxel_size(vs: Sequence[float] | None, name: str = "voxel size") -> tuple[float, float, float]:
    """Validate a voxel size in mm: three finite positive numbers."""
    if vs is None:
        raise QSMInputError(name, "the voxel size is missing",
                            "set pixdim in the header or pass the voxel size in mm explicitly")
    v = np.asarray(vs, dtype=np.float64).ravel()
    if v.size != 3 or not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise QSMInputError(name, f"voxel size must be three positive mm values, got {list(v)}",
                            "fix pixdim/the affine in the header or pass the voxel size in mm explicitly")
    if np.any(v > 20) or np.any(v < 0.01):
        raise QSMInputError(name, f"voxel size {list(v)} mm is implausible for MRI",
                            "check that the header stores millimetres and pass the correct voxel size")
    return tuple(float(x) for x in v)


def rotation(affine: np.ndarray) -> np.ndarray:
    """Orthonormal rotation part R of the affine (polar decomposition of A diag(1/vs))."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    m = a / np.linalg.norm(a, axis=0, keepdims=True)
    u, _, vt = np.linalg.svd(m)
    return u @ vt


def b0_direction(affine: np.ndarray | None = None, override: Sequence[float] | None = None,
                 name: str = "B0 direction") -> tuple[float, float, float]:
    """Unit B0 vector in voxel-axis coordinates.

    ``override`` (three numbers, voxel-axis coordinates) wins when given; otherwise
    b = R^-1 (0, 0, 1) from the affine (B0 along scanner z).
    """
    if override is not None:
        b = np.asarray(override, dtype=np.float64).ravel()
        if b.size != 3 or not np.all(np.isfinite(b)) or np.linalg.norm(b) < 1e-6:
            raise QSMInputError(name, f"the B0 direction must be three finite numbers, not all zero; got {list(b)}",
                                "pass e.g. --b0-dir 0 0 1 (voxel-axis coordinates)")
        b = b / np.linalg.norm(b)
        return tuple(float(x) for x in b)
    if affine is None:
        raise QSMInputError(name, "unknown: no affine and no override",
                            "pass the B0 direction explicitly, e.g. --b0-dir 0 0 1")
    r = rotation(affine)
    b = r.T @ np.array([0.0, 0.0, 1.0])
    b = b / np.linalg.norm(b)
    return tuple(float(x) for x in b)


def oblique_affine(voxel_size_mm: Sequence[float], angle_deg: float, axis: str = "x",
                   shape: Sequence[int] | None = None) -> np.ndarray:
    """Affine of an acquisition rotated by ``angle_deg`` about the scanner ``axis`` (for tests/phantoms)."""
    t = np.deg2rad(angle_deg)
    c, s = np.cos(t), np.sin(t)
    rots = {"x": [[1, 0, 0], [0, c, -s], [0, s, c]],
            "y": [[c, 0, s], [0, 1, 0], [-s, 0, c]],
            "z": [[c, -s, 0], [s, c, 0], [0, 0, 1]]}
    a = np.eye(4)
    a[:3, :3] = np.asarray(rots[axis]) @ np.diag(np.asarray(voxel_size_mm, dtype=np.float64))
    if shape is not None:
        a[:3, 3] = -a[:3, :3] @ (np.asarray(shape) / 2.0)
    return a


def same_geometry(a1: np.ndarray, a2: np.ndarray, tol_mm: float = 1e-3) -> bool:
    """True when two affines place every voxel within ``tol_mm`` of each other."""
    return bool(np.allclose(np.asarray(a1, float), np.asarray(a2, float), atol=tol_mm))
