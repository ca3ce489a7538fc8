"""Projection onto dipole fields (PDF; Liu T. et al. NMR Biomed 2011;24:1129) background removal, torch.

The background field is modelled as the field of susceptibility sources *outside* the mask:

    chi_b = argmin || W (M (d * (M_out chi_b)) - f) ||^2,       f_local = f - d * (M_out chi_b)  (inside M)

with d the unit dipole kernel, M the brain mask, M_out = 1 - M over the padded grid (the FOV
outside the brain plus a zero-padded margin standing in for sources beyond the FOV), and W
the mask times an optional normalised magnitude (MEDI uses 1/noise std). Solved with LSQR,
early stopped like MEDI's conjugate gradient (``tol``, ``maxiter``). The local field is
orthogonal (in the W-weighted sense) to every field that outside sources can produce.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from ..dipole import dipole_kernel
from .ilsqr import lsqr_torch
from .l2 import data_weights, make_grid, resolve_device

Vec3 = Sequence[float]


def pdf(total_field: np.ndarray, mask: np.ndarray, voxel_size: Vec3 = (1.0, 1.0, 1.0),
        b0_dir: Vec3 = (0.0, 0.0, 1.0), tol: float = 1e-3, maxiter: int = 50,
        magnitude: Optional[np.ndarray] = None, pad: int | Sequence[int] | None = 16,
        device: str = "auto", callback: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
    """Remove the background field by projection onto dipole fields.

    Args:
        total_field: 3D total field [ppm] (i, j, k); only values inside ``mask`` are used.
        mask: 3D bool brain mask (the local field is returned on this mask; no erosion).
        voxel_size: mm. b0_dir: unit B0 vector in voxel axes.
        tol: LSQR relative tolerance on the normal-equation residual.
        maxiter: maximum LSQR iterations.
        magnitude: optional magnitude image for the data weighting.
        pad: zero padding per side around the mask's bounding box in voxels (default 16) where
            background sources beyond the FOV may sit.
        device: 'auto' | 'cpu' | 'cuda'.
        callback: called as callback(iteration, maxiter).

    Returns:
        local field [ppm], float32, zero outside ``mask``.
    """
    import torch

    dev = resolve_device(device)
    m = np.asarray(mask) > 0
    vs = tuple(float(v) for v in voxel_size)
    grid = make_grid(m, pad, margin=0)
    shape = grid.shape
    half = shape[2] // 2 + 1
    w_np = data_weights(m, magnitude)
    with torch.no_grad():
        f = torch.from_numpy(grid.to_grid(np.where(m, total_field, 0))).to(dev)
        W = torch.from_numpy(grid.to_grid(w_np)).to(dev)
        Mout = 1.0 - torch.from_numpy(grid.to_grid(m.astype(np.float32))).to(dev)
        D = torch.from_numpy(np.ascontiguousarray(dipole_kernel(shape, vs, b0_dir)[..., :half])).to(dev)
        conv = lambda x: torch.fft.irfftn(D * torch.fft.rfftn(x), s=shape)  # noqa: E731
        A = lambda x: W * conv(Mout * x)  # noqa: E731
        AT = lambda y: Mout * conv(W * y)  # noqa: E731
        chi_b, _ = lsqr_torch(A, AT, W * f, f, tol=tol, maxiter=maxiter,
                              callback=(lambda i: callback(i, maxiter)) if callback else None)
        bg = conv(Mout * chi_b)
        local = (f - bg).cpu().numpy()
    return np.where(m, grid.from_grid(local), 0).astype(np.float32)
