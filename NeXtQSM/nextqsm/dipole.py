"""Dipole kernel and forward model chi [ppm] -> field [ppm], in numpy and torch.

Kernel (k-space, continuous form sampled on the FFT grid):

    D(k) = 1/3 - (k . b)^2 / |k|^2

with k in cycles/mm along the voxel axes (so anisotropic voxels are exact) and b the
unit B0 vector in voxel-axis coordinates (``geometry.b0_direction``).
The kernel is made exactly Hermitian-symmetric on the periodic grid (only the Nyquist
planes of even sizes change, and only for oblique B0). **D(0) convention**: ``D(0) = 0`` by default (the field has zero mean over the padded
FOV, i.e. no Lorentz-sphere constant); pass ``dc=1/3`` for the Lorentz-sphere value.

The forward model zero-pads chi (``pad`` voxels per side, default a quarter of each
dimension rounded up to a fast FFT length) to avoid wrap-around of the 1/r^3 dipole field.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.fft as sfft

Shape = Sequence[int]
Vec3 = Sequence[float]


def _unit(b0_dir: Vec3) -> np.ndarray:
    b = np.asarray(b0_dir, dtype=np.float64).ravel()
    n = np.linalg.norm(b)
    if b.size != 3 or not np.isfinite(n) or n < 1e-9:
        from .errors import QSMInputError
        raise QSMInputError("B0 direction", f"invalid vector {list(b)}",
                            "pass three finite numbers, e.g. 0 0 1")
    return b / n


def kspace_grid(shape: Shape, voxel_size: Vec3) -> list[np.ndarray]:
    """Broadcastable k-space coordinates (cycles/mm) along each voxel axis, FFT order."""
    return [np.fft.fftfreq(int(n), d=float(d)).reshape([-1 if a == ax else 1 for a in range(3)])
            for ax, (n, d) in enumerate(zip(shape, voxel_size))]


def dipole_kernel(shape: Shape, voxel_size: Vec3 = (1.0, 1.0, 1.0), b0_dir: Vec3 = (0.0, 0.0, 1.0),
                  dc: float = 0.0, dtype=np.float32) -> np.ndarray:
    """k-space dipole kernel D(k) of ``shape`` (FFT order, not shifted), real, unitless."""
    b = _unit(b0_dir)
    kx, ky, kz = kspace_grid(shape, voxel_size)
    k2 = kx ** 2 + ky ** 2 + kz ** 2
    kb = kx * b[0] + ky * b[1] + kz * b[2]
    with np.errstate(invalid="ignore", divide="ignore"):
        d = 1.0 / 3.0 - kb ** 2 / k2
    d[0, 0, 0] = dc
    # Hermitian symmetry D(k) = D(-k) on the periodic grid: for even sizes with oblique B0 the
    # Nyquist planes have no mirror partner; averaging keeps the real-space kernel real.
    d = 0.5 * (d + np.roll(np.flip(d), 1, axis=(0, 1, 2)))
    return d.astype(dtype)


def padded_shape(shape: Shape, pad: int | Sequence[int] | None = None) -> tuple[int, ...]:
    """Shape after zero padding by ``pad`` voxels per side (default ceil(n/4)), rounded to a fast FFT length."""
    if pad is None:
        pad = [int(np.ceil(n / 4)) for n in shape]
    elif np.isscalar(pad):
        pad = [int(pad)] * len(shape)
    return tuple(sfft.next_fast_len(int(n) + 2 * int(p)) for n, p in zip(shape, pad))


def pad_array(x: np.ndarray, shape: Shape) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pad ``x`` centrally to ``shape``; return the padded array and the slices that crop it back."""
    before = [(t - n) // 2 for n, t in zip(x.shape, shape)]
    widths = [(b, t - n - b) for b, n, t in zip(before, x.shape, shape)]
    sl = tuple(slice(b, b + n) for b, n in zip(before, x.shape))
    return np.pad(x, widths), sl


def forward_field(chi: np.ndarray, voxel_size: Vec3 = (1.0, 1.0, 1.0), b0_dir: Vec3 = (0.0, 0.0, 1.0),
                  pad: int | Sequence[int] | None = None, dc: float = 0.0) -> np.ndarray:
    """Field [ppm] of susceptibility ``chi`` [ppm] (numpy, float32). ``pad=0`` means circular convolution."""
    chi = np.asarray(chi, dtype=np.float32)
    pshape = padded_shape(chi.shape, pad)
    xp, sl = pad_array(chi, pshape)
    d = dipole_kernel(pshape, voxel_size, b0_dir, dc=dc)
    f = sfft.ifftn(sfft.fftn(xp, workers=-1) * d, workers=-1).real
    return np.ascontiguousarray(f[sl], dtype=np.float32)


# ----------------------------------------------------------------------------------- torch
def dipole_kernel_torch(shape: Shape, voxel_size: Vec3 = (1.0, 1.0, 1.0), b0_dir: Vec3 = (0.0, 0.0, 1.0),
                        dc: float = 0.0, device=None, dtype=None):
    """Torch version of :func:`dipole_kernel` (float32 unless ``dtype``), built on ``device``."""
    import torch

    dtype = dtype or torch.float32
    b = _unit(b0_dir)
    ks = [torch.fft.fftfreq(int(n), d=float(d), device=device, dtype=torch.float64) for n, d in zip(shape, voxel_size)]
    kx, ky, kz = torch.meshgrid(*ks, indexing="ij")
    k2 = kx ** 2 + ky ** 2 + kz ** 2
    kb = kx * float(b[0]) + ky * float(b[1]) + kz * float(b[2])
    k2[0, 0, 0] = 1.0
    d = 1.0 / 3.0 - kb ** 2 / k2
    d[0, 0, 0] = dc
    d = 0.5 * (d + torch.roll(torch.flip(d, dims=(0, 1, 2)), shifts=(1, 1, 1), dims=(0, 1, 2)))
    return d.to(dtype)


def forward_field_torch(chi, voxel_size: Vec3 = (1.0, 1.0, 1.0), b0_dir: Vec3 = (0.0, 0.0, 1.0),
                        pad: int | Sequence[int] | None = None, dc: float = 0.0, kernel=None):
    """Field [ppm] of ``chi`` [ppm]; ``chi`` is a torch tensor (..., i, j, k) on any device.

    ``kernel`` (already of the padded shape) can be passed to avoid rebuilding it.
    Differentiable; ``pad=0`` means circular convolution.
    """
    import torch
    import torch.nn.functional as F

    shape = chi.shape[-3:]
    pshape = padded_shape(shape, pad)
    before = [(t - n) // 2 for n, t in zip(shape, pshape)]
    widths = []
    for b, n, t in reversed(list(zip(before, shape, pshape))):
        widths += [b, t - n - b]
    xp = F.pad(chi, widths) if any(widths) else chi
    if kernel is None:
        kernel = dipole_kernel_torch(pshape, voxel_size, b0_dir, dc=dc, device=chi.device)
    f = torch.fft.ifftn(torch.fft.fftn(xp, dim=(-3, -2, -1)) * kernel, dim=(-3, -2, -1)).real
    return f[..., before[0]:before[0] + shape[0], before[1]:before[1] + shape[1], before[2]:before[2] + shape[2]]
