"""Thresholded k-space division (TKD; Shmueli 2009, Wharton 2010)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.fft as sfft

from ..dipole import dipole_kernel, pad_array, padded_shape


def tkd(local_field: np.ndarray, mask: np.ndarray, voxel_size: Sequence[float] = (1, 1, 1),
        b0_dir: Sequence[float] = (0, 0, 1), threshold: float = 0.19, pad: int | None = None,
        mode: str = "truncate") -> np.ndarray:
    """chi [ppm] = F^-1( F(field * mask) * Dinv ).

    Dinv = 1/D where |D| > threshold; elsewhere ``mode='truncate'`` uses sign(D)/threshold
    (Wharton) and ``mode='zero'`` uses 0 (Shmueli). D(0) = 0 so chi has zero mean before masking.
    """
    f = np.where(mask, local_field, 0).astype(np.float32)
    pshape = padded_shape(f.shape, pad)
    fp, sl = pad_array(f, pshape)
    d = dipole_kernel(pshape, voxel_size, b0_dir)
    big = np.abs(d) > threshold
    with np.errstate(divide="ignore"):
        inv = np.where(big, 1.0 / np.where(big, d, 1.0),
                       np.sign(d) / threshold if mode == "truncate" else 0.0).astype(np.float32)
    inv[0, 0, 0] = 0.0
    chi = sfft.ifftn(sfft.fftn(fp, workers=-1) * inv, workers=-1).real[sl]
    return np.where(mask, chi, 0).astype(np.float32)
