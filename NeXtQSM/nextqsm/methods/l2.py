"""Closed-form L2 dipole inversion with a gradient penalty (Bilgic et al. MRM 2014, 'L2 closed form').

    chi = argmin ||D chi - f||^2 + lam ||grad chi||^2
        = F^-1[ D F(f) / (D^2 + lam |E|^2) ]

with D the dipole kernel and E the k-space transfer functions of forward differences in
ppm/mm (|E|^2 = sum_a (2 - 2 cos(2 pi m_a / N_a)) / d_a^2), so the penalty is the same for
isotropic and anisotropic voxels. One FFT pair: ~1 s at 160^3.

This module also holds the small helpers shared by the iterative inversions (``tv``,
``ilsqr``, ``pdf``): cropping to the mask's bounding box with padding, the gradient
transfer function, and the torch device choice.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.fft as sfft

from ..dipole import dipole_kernel

Vec3 = Sequence[float]

#: Tuned on the 2016 challenge local field (NRMSE vs COSMOS, demeaned in msk: 64.4 % at 0.075-0.09, the optimum);
#: see benchmarks/results_classical.md. Noise-free simulations want far less (~0.003).
DEFAULT_L2_LAMBDA = 0.08


@dataclass
class Grid:
    """A padded working grid around the mask's bounding box.

    ``crop`` selects the bounding box (plus margin) in the input volume; ``inner`` selects it
    inside the padded grid of shape ``shape``.
    """

    full_shape: tuple[int, ...]
    crop: tuple[slice, ...]
    inner: tuple[slice, ...]
    shape: tuple[int, ...]

    def to_grid(self, x: np.ndarray, dtype=np.float32) -> np.ndarray:
        out = np.zeros(self.shape, dtype=dtype)
        out[self.inner] = x[self.crop]
        return out

    def from_grid(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros(self.full_shape, dtype=np.float32)
        out[self.crop] = np.asarray(x)[self.inner]
        return out


def make_grid(mask: np.ndarray, pad: int | Sequence[int] | None = None, margin: int = 2) -> Grid:
    """Working grid: the mask's bounding box (+ ``margin`` voxels) padded by ``pad`` voxels per side.

    Default ``pad``: a quarter of the bounding-box size per side (at least 8 voxels), rounded up to
    a fast real-FFT length. Cropping to the box makes the FFTs of a head in a large FOV cheaper.
    """
    m = np.asarray(mask) > 0
    idx = np.nonzero(m)
    if idx[0].size == 0:
        lo, hi = [0] * m.ndim, list(m.shape)
    else:
        lo = [max(int(i.min()) - margin, 0) for i in idx]
        hi = [min(int(i.max()) + 1 + margin, n) for i, n in zip(idx, m.shape)]
    box = [h - l for l, h in zip(lo, hi)]
    if pad is None:
        pad = [max(8, int(np.ceil(b / 4))) for b in box]
    elif np.isscalar(pad):
        pad = [int(pad)] * m.ndim
    shape = tuple(sfft.next_fast_len(b + 2 * int(p), real=True) for b, p in zip(box, pad))
    before = [(s - b) // 2 for s, b in zip(shape, box)]
    crop = tuple(slice(l, h) for l, h in zip(lo, hi))
    inner = tuple(slice(b, b + n) for b, n in zip(before, box))
    return Grid(tuple(m.shape), crop, inner, shape)


def grad_kernel_sq(shape: Sequence[int], voxel_size: Vec3, dtype=np.float32) -> np.ndarray:
    """|E(k)|^2 = sum over axes of |forward-difference transfer function|^2 in 1/mm^2 (FFT order, full grid)."""
    out = np.zeros(shape, dtype=np.float64)
    for ax, (n, d) in enumerate(zip(shape, voxel_size)):
        m = np.fft.fftfreq(int(n))  # cycles per voxel
        e = (2.0 - 2.0 * np.cos(2 * np.pi * m)) / float(d) ** 2
        out = out + e.reshape([-1 if a == ax else 1 for a in range(3)])
    return out.astype(dtype)


def data_weights(mask: np.ndarray, magnitude: np.ndarray | None = None) -> np.ndarray:
    """Data-term weights (float32): the mask, times the magnitude normalised by its 99th percentile
    inside the mask and clipped to [0, 1] when a magnitude is given."""
    m = np.asarray(mask) > 0
    w = m.astype(np.float32)
    if magnitude is not None:
        mag = np.asarray(magnitude, dtype=np.float32)
        scale = float(np.percentile(mag[m], 99)) if m.any() else 1.0
        w = w * np.clip(mag / max(scale, 1e-12), 0, 1)
    return w


def resolve_device(device: str | None = "auto") -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; 'cpu'/'cuda'/'cuda:N' pass through."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        from ..errors import QSMInputError
        raise QSMInputError("device", f"{device!r} was requested but torch sees no CUDA GPU",
                            "use --device cpu (or auto)")
    return str(device)


def l2_inversion(local_field: np.ndarray, mask: np.ndarray, voxel_size: Vec3 = (1.0, 1.0, 1.0),
                 b0_dir: Vec3 = (0.0, 0.0, 1.0), lam: float = DEFAULT_L2_LAMBDA,
                 pad: int | Sequence[int] | None = None) -> np.ndarray:
    """Closed-form gradient-regularised L2 inversion.

    Args:
        local_field: 3D local field [ppm] (i, j, k); used inside ``mask`` only.
        mask: 3D bool.
        voxel_size: mm. b0_dir: unit vector in voxel axes.
        lam: weight of ||grad chi||^2 with gradients in ppm/mm (default tuned on the 2016
            challenge; Bilgic's voxel-unit lambda equals ``lam`` at 1 mm isotropic).
        pad: zero padding per side (voxels) around the mask's bounding box (default see :func:`make_grid`).

    Returns:
        chi [ppm], float32, zero outside ``mask``; zero mean over the padded grid (D(0) = 0).
    """
    m = np.asarray(mask) > 0
    grid = make_grid(m, pad)
    f = grid.to_grid(np.where(m, local_field, 0))
    d = dipole_kernel(grid.shape, voxel_size, b0_dir)
    d = d[..., : grid.shape[2] // 2 + 1]
    e2 = grad_kernel_sq(grid.shape, voxel_size)[..., : grid.shape[2] // 2 + 1]
    den = d * d + float(lam) * e2
    with np.errstate(invalid="ignore", divide="ignore"):
        filt = np.where(den > 0, d / np.where(den > 0, den, 1.0), 0.0).astype(np.float32)
    chi = sfft.irfftn(sfft.rfftn(f, workers=-1) * filt, s=grid.shape, workers=-1)
    return np.where(m, grid.from_grid(chi), 0).astype(np.float32)
