"""Input checks shared by the CLI, the pipelines and the Slicer logic.

Every failure raises :class:`QSMInputError` naming the input, the problem and the fix.
"""
from __future__ import annotations

import numpy as np

from .errors import QSMInputError
from .geometry import same_geometry


def check_finite(x: np.ndarray, name: str, mask: np.ndarray | None = None) -> None:
    """No NaN/Inf (inside ``mask`` when given)."""
    vals = x[mask > 0] if mask is not None else x
    bad = ~np.isfinite(vals)
    if bad.any():
        raise QSMInputError(name, f"contains {int(bad.sum())} NaN/Inf values" + (" inside the mask" if mask is not None else ""),
                            "replace them (e.g. with 0) or exclude those voxels from the mask")


def check_3d(x: np.ndarray, name: str) -> None:
    if x.ndim != 3:
        raise QSMInputError(name, f"expected a 3D volume, got shape {x.shape} ({x.ndim}D)",
                            "pass one 3D volume; multi-echo 4D phase goes through `nextqsm pipeline`")


def check_mask(mask: np.ndarray, name: str = "mask", like: np.ndarray | None = None, like_name: str = "field") -> np.ndarray:
    """Binary, non-empty, 3D, same shape as ``like``; returns a bool array."""
    check_3d(mask, name)
    if like is not None and mask.shape != like.shape[:3]:
        raise QSMInputError(name, f"shape {mask.shape} does not match {like_name} shape {like.shape[:3]}",
                            f"resample the mask onto the {like_name} grid")
    if not np.all(np.isfinite(mask)):
        raise QSMInputError(name, "contains NaN/Inf", "pass a binary 0/1 mask")
    vals = np.unique(mask)
    if not np.all(np.isin(vals, (0, 1))):
        raise QSMInputError(name, f"is not binary (values include {vals[:5].tolist()}...)",
                            "pass a 0/1 brain mask (threshold a probability map, or select one label)")
    m = mask > 0
    if not m.any():
        raise QSMInputError(name, "is empty (no voxel is 1)", "pass a mask that covers the brain")
    return m


def check_same_grid(affine_a: np.ndarray, affine_b: np.ndarray, name_a: str, name_b: str) -> None:
    if not same_geometry(affine_a, affine_b, tol_mm=1e-2):
        raise QSMInputError(name_b, f"its affine differs from that of {name_a} (the volumes are not on the same grid)",
                            f"resample {name_b} onto the grid of {name_a} (same affine and shape)")


def check_field_ppm(field: np.ndarray, mask: np.ndarray, name: str = "field", allow: bool = False) -> None:
    """Guard against radians or Hz passed where ppm is expected.

    A local/total brain field is a few ppm at most (background fields near sinuses reach
    ~10 ppm); 99th-percentile |field| above 30 looks like Hz, values spread over +-pi
    with many wraps look like radians. ``allow=True`` skips the check.
    """
    if allow:
        return
    v = np.abs(field[mask])
    if v.size == 0:
        return
    p99 = float(np.percentile(v, 99))
    if p99 > 30:
        raise QSMInputError(name, f"values look like Hz, not ppm (99th percentile of |field| = {p99:.3g})",
                            "divide by gamma*B0 (42.576 * B0[T] Hz/ppm), or pass --allow-any-range to override")
    if p99 > 2.5:
        raise QSMInputError(name, f"values look like radians, not ppm (99th percentile of |field| = {p99:.3g})",
                            "divide the unwrapped phase by 2*pi*TE*gamma*B0*1e-6, or pass --allow-any-range to override")
