"""Brain mask from the magnitude image when none is given (a given mask always wins).

Steps: robust threshold (Otsu on the log magnitude by default, or a fraction of a high
percentile), morphological opening to cut thin bridges, largest connected component, hole
filling (3D, then slice by slice), optional erosion in mm. This is a simple, dependable mask
for phase processing; for clinical use an atlas/skull-stripping mask (e.g. from a T1) is better.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from ..errors import QSMInputError

Vec3 = Sequence[float]


def _ball(radius_vox: Sequence[float]) -> np.ndarray:
    r = [max(int(np.floor(x)), 0) for x in radius_vox]
    g = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    d = sum((gi / max(x, 1e-6)) ** 2 for gi, x in zip(g, radius_vox))
    return d <= 1.0 + 1e-9


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a boolean mask (empty stays empty)."""
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    return lab == (1 + int(np.argmax(sizes)))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes in 3D, then in every axial (k) slice."""
    m = ndimage.binary_fill_holes(mask)
    for k in range(m.shape[2]):
        m[:, :, k] = ndimage.binary_fill_holes(m[:, :, k])
    return m


def brain_mask(magnitude: np.ndarray, voxel_size: Vec3 = (1, 1, 1), method: str = "otsu",
               percentile: float = 99.0, fraction: float = 0.15, open_mm: float = 2.0,
               erode_mm: float = 0.0) -> np.ndarray:
    """Boolean mask (i, j, k) from a magnitude image (3D, or 4D echoes: root-sum-of-squares is used).

    ``method='otsu'``: Otsu threshold of log(magnitude) over the non-zero voxels.
    ``method='percentile'``: magnitude > ``fraction`` * the ``percentile``-th percentile.
    ``open_mm``: radius of the opening that detaches the scalp; ``erode_mm``: final erosion.
    """
    from skimage.filters import threshold_otsu

    mag = np.asarray(magnitude, dtype=np.float64)
    if mag.ndim == 4:
        mag = np.sqrt(np.sum(np.nan_to_num(mag) ** 2, axis=3))
    if mag.ndim != 3:
        raise QSMInputError("magnitude", f"expected a 3D or 4D image, got shape {mag.shape}",
                            "pass the magnitude NIfTI (echoes on the 4th axis)")
    mag = np.nan_to_num(np.abs(mag))
    pos = mag[mag > 0]
    if pos.size < 10 or np.ptp(pos) == 0:
        raise QSMInputError("magnitude", "is empty or constant, so no brain mask can be derived",
                            "pass a real magnitude image or give a mask with --mask")
    if method == "otsu":
        thr = float(np.exp(threshold_otsu(np.log(pos))))
    elif method == "percentile":
        thr = fraction * float(np.percentile(pos, percentile))
    else:
        raise QSMInputError("mask method", f"unknown method {method!r}", "use 'otsu' or 'percentile'")
    m = mag > thr
    vs = np.asarray(voxel_size, dtype=np.float64)
    if open_mm > 0:
        se = _ball(open_mm / vs)
        if se.sum() > 1:
            m = ndimage.binary_opening(m, structure=se)
    m = largest_component(m)
    m = fill_holes(m)
    if erode_mm > 0:
        se = _ball(erode_mm / vs)
        m = ndimage.binary_erosion(m, structure=se)
        m = largest_component(m)
    if not m.any():
        raise QSMInputError("magnitude", "the automatic brain mask came out empty",
                            "give a mask with --mask, or try --mask-method percentile")
    return m


def mask_or_given(given: Optional[np.ndarray], magnitude: Optional[np.ndarray], voxel_size: Vec3 = (1, 1, 1),
                  shape: Optional[tuple] = None, **kw) -> tuple[np.ndarray, str]:
    """Return ``(mask, source)``: the given mask when present (it always wins), else one from the magnitude."""
    if given is not None:
        g = np.asarray(given)
        if shape is not None and g.shape[:3] != tuple(shape[:3]):
            raise QSMInputError("mask", f"shape {g.shape} does not match the phase shape {tuple(shape[:3])}",
                                "resample the mask onto the phase grid")
        m = np.nan_to_num(g[..., 0] if g.ndim == 4 else g) > 0
        if not m.any():
            raise QSMInputError("mask", "is empty (no voxel is non-zero)", "pass a mask that covers the brain")
        return m, "given"
    if magnitude is None:
        raise QSMInputError("mask", "no mask and no magnitude were given, so no brain mask can be made",
                            "pass --mask MASK.nii.gz or --magnitude M.nii.gz")
    return brain_mask(magnitude, voxel_size, **kw), "magnitude"
