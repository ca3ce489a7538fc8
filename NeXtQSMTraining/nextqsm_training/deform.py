"""Random spatial deformation of label maps: affine (rotation, scaling, shear, translation) plus a
smooth diffeomorphic elastic field (a random low-resolution stationary velocity field integrated
by scaling and squaring, as in SynthSeg), sampled with nearest neighbour. Vectorised torch; runs
on the device of the tensors (GPU when present).

Geometry is in mm. The output grid has ``out_shape`` voxels of ``out_voxel`` mm, centred on 0.
An output point x maps to the source point ``p = A @ (x + u(x)) + t + centre_src`` (mm), where
``u`` is the elastic displacement (mm) and ``A``, ``t`` the affine; the label at p is looked up
in the source volume (voxel index ``round(p / src_voxel)``; outside -> index 0 = background).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def rotation_matrix(angles_rad: Sequence[float]) -> np.ndarray:
    """Rotation about x, then y, then z (radians) as a 3x3 matrix."""
    a, b, c = angles_rad
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_affine(rng: np.random.Generator, rotation_deg: float = 15.0, scaling: float = 0.12,
                  shear: float = 0.04, translation_mm: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """Random affine (3x3 matrix ``A``, translation ``t`` mm) mapping output mm -> source mm.

    Rotation angles uniform in +-``rotation_deg``, per-axis scale in 1 +- ``scaling``, shear
    terms in +-``shear``, translation in +-``translation_mm``.
    """
    rot = rotation_matrix(np.deg2rad(rng.uniform(-rotation_deg, rotation_deg, 3)))
    scl = np.diag(rng.uniform(1 - scaling, 1 + scaling, 3))
    sh = np.eye(3)
    sh[np.triu_indices(3, 1)] = rng.uniform(-shear, shear, 3)
    sh[np.tril_indices(3, -1)] = rng.uniform(-shear, shear, 3)
    return rot @ scl @ sh, rng.uniform(-translation_mm, translation_mm, 3)


def integrate_svf(v: torch.Tensor, steps: int = 6) -> torch.Tensor:
    """Scaling and squaring: displacement ``u`` = exp(v) for a stationary velocity ``v``.

    ``v`` is (1, 3, n, n, n) in *normalised* grid units ([-1, 1] along each axis, channel c
    along spatial axis c of the volume). Returns the displacement in the same units.
    """
    u = v / (2 ** steps)
    n = v.shape[2:]
    base = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, s, device=v.device, dtype=v.dtype) for s in n],
                                      indexing="ij"), dim=-1)[None]          # (1, i, j, k, 3) axis order
    for _ in range(steps):
        # grid_sample wants (x=k, y=j, z=i) order in the last dim
        g = (base + u.permute(0, 2, 3, 4, 1)).flip(-1)
        u = u + F.grid_sample(u, g, mode="bilinear", padding_mode="border", align_corners=True)
    return u


def random_elastic(rng: np.random.Generator, out_shape: Sequence[int], fov_mm: Sequence[float],
                   max_std_mm: float = 3.0, low_res: tuple[int, int] = (5, 9), int_res: int = 24,
                   device=None) -> torch.Tensor:
    """Smooth random displacement (mm), shape (3, *out_shape), float32 on ``device``.

    A velocity field of random low resolution (``low_res`` range, per axis) with Gaussian values of
    std uniform in [0, ``max_std_mm``] is upsampled to ``int_res``^3, integrated by scaling and
    squaring (diffeomorphic) and upsampled (trilinear) to the output grid.
    """
    n = int(rng.integers(low_res[0], low_res[1] + 1))
    std = rng.uniform(0, max_std_mm)
    fov = torch.tensor([float(f) for f in fov_mm], dtype=torch.float32, device=device).view(1, 3, 1, 1, 1)
    v = torch.from_numpy(rng.standard_normal((1, 3, n, n, n)).astype(np.float32) * std).to(device)
    v = F.interpolate(v, size=(int_res,) * 3, mode="trilinear", align_corners=True)
    u = integrate_svf(v * 2 / fov) * fov / 2     # mm -> normalised units and back
    u = F.interpolate(u, size=tuple(int(s) for s in out_shape), mode="trilinear", align_corners=True)
    return u[0]


def output_axes_mm(out_shape: Sequence[int], out_voxel: Sequence[float], device=None) -> list[torch.Tensor]:
    """Per-axis coordinates (mm) of the output voxel centres, centred on 0: three 1D float32 tensors."""
    return [(torch.arange(n, device=device, dtype=torch.float32) - (n - 1) / 2) * float(v)
            for n, v in zip(out_shape, out_voxel)]


def output_grid_mm(out_shape: Sequence[int], out_voxel: Sequence[float], device=None) -> torch.Tensor:
    """Coordinates (mm) of the output voxel centres, centred on 0: (3, *out_shape) float32."""
    return torch.stack(torch.meshgrid(*output_axes_mm(out_shape, out_voxel, device), indexing="ij"))


def sample_labels(src_idx: torch.Tensor, src_voxel: Sequence[float], points_mm: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour lookup of ``src_idx`` (i, j, k) uint8 at ``points_mm`` (3, ...) source mm.

    Exact nearest neighbour via rounding + flat gather (no float conversion of the label volume);
    points outside the source return index 0 (background).
    """
    shape = src_idx.shape
    out_shape = points_mm.shape[1:]
    inside = None
    flat = None
    for a in range(3):   # float32 index arithmetic is exact below 2**24 voxels
        ia = torch.round(points_mm[a] * (1.0 / float(src_voxel[a])))
        ok = (ia >= 0) & (ia <= shape[a] - 1)
        inside = ok if inside is None else inside & ok
        ia.clamp_(0, shape[a] - 1)
        flat = ia if flat is None else flat * shape[a] + ia
    if src_idx.numel() >= 2 ** 24:
        raise ValueError("label volume too large for float32 indexing; crop or stride it")
    out = src_idx.reshape(-1)[flat.reshape(-1).to(torch.int64)].reshape(out_shape)
    return out * inside


def deform_labels(src_idx: torch.Tensor, src_voxel: Sequence[float], centre_src_mm: Sequence[float],
                  out_shape: Sequence[int], out_voxel: Sequence[float], A: np.ndarray | None = None,
                  t: np.ndarray | None = None, disp_mm: torch.Tensor | None = None) -> torch.Tensor:
    """Resample label indices onto the output grid through the affine ``A, t`` and displacement.

    ``src_idx``: (i, j, k) uint8 tensor; ``centre_src_mm``: the source point mapped to the output
    centre; ``disp_mm``: (3, *out_shape) or None. Returns (*out_shape) uint8 on ``src_idx.device``.
    """
    dev = src_idx.device
    x = output_grid_mm(out_shape, out_voxel, device=dev)
    if disp_mm is not None:
        x = x + disp_mm
    if A is not None:
        At = torch.as_tensor(np.asarray(A, np.float32), device=dev)
        x = torch.einsum("ab,b...->a...", At, x)
    off = np.asarray(centre_src_mm, np.float64) + (0 if t is None else np.asarray(t, np.float64))
    x = x + torch.as_tensor(off.astype(np.float32), device=dev).view(3, 1, 1, 1)
    return sample_labels(src_idx, src_voxel, x)
