"""External (background-field) sources: random ellipsoids around the brain, outside the mask.

NeXtQSM's recipe: about 100 ellipsoids with air-like susceptibility (~9.2 ppm relative to tissue,
randomised), each about a tenth of the brain volume (randomised), placed around the brain and never
inside it. Together with the skull / air / soft-tissue classes of a whole-head label map they make
a strong background field: total = D * (brain chi + external chi), local = D * brain chi.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .deform import rotation_matrix
from .susceptibility import paint_ellipsoid


def _box_any(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Along ``dim``: True where any element within +-r is True (running sum via cumsum, O(N))."""
    n = x.shape[dim]
    c = torch.cumsum(x.to(torch.int32), dim=dim)
    shape = list(c.shape)
    shape[dim] = 1
    c = torch.cat([torch.zeros(shape, dtype=c.dtype, device=c.device), c], dim=dim)   # c[i] = sum x[:i]
    hi = torch.clamp(torch.arange(n, device=x.device) + r + 1, max=n)
    lo = torch.clamp(torch.arange(n, device=x.device) - r, min=0)
    return (c.index_select(dim, hi) - c.index_select(dim, lo)) > 0


def dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    """Binary dilation of a bool (i, j, k) tensor by a (2r+1)^3 cube (separable running sums)."""
    if r <= 0:
        return mask
    x = mask
    for d in range(3):
        x = _box_any(x, int(r), d)
    return x


def erode(mask: torch.Tensor, r: int) -> torch.Tensor:
    """Binary erosion by a (2r+1)^3 cube."""
    return ~dilate(~mask, r) if r > 0 else mask


def random_ellipsoids(chi_ext: torch.Tensor, keep_out: torch.Tensor, voxel_size: Sequence[float],
                      rng: np.random.Generator, n: int = 100, brain_volume_vox: float | None = None,
                      volume_fraction=(0.03, 0.2), chi_mean: float = 9.2, chi_sd: float = 1.5,
                      p_bone: float = 0.15, grid: int = 64) -> int:
    """Paint ``n`` random ellipsoids into ``chi_ext`` (ppm, in place), never inside ``keep_out``.

    Volumes: ``volume_fraction`` (log-uniform) x the brain volume; aspect ratios up to 3; random
    orientation; centres uniform in the FOV but outside ``keep_out``. Values: air-like
    N(``chi_mean``, ``chi_sd``) or, with probability ``p_bone``, bone-like N(-2, 0.5). Later
    ellipsoids overwrite earlier ones. All ellipsoids are evaluated at once on a grid of at most
    ``grid`` points per axis (nearest-neighbour upsampled; exact when the volume is smaller), then
    ``keep_out`` is applied at full resolution. Returns the number of ellipsoids.
    """
    import torch.nn.functional as F

    shape = np.array(chi_ext.shape)
    dev = chi_ext.device
    vs = np.asarray(voxel_size, float)
    if brain_volume_vox is None:
        brain_volume_vox = float(keep_out.sum())
    free = torch.nonzero(~keep_out[::2, ::2, ::2]).cpu().numpy() * 2
    if len(free) == 0 or n <= 0:
        return 0
    centres = free[rng.integers(0, len(free), n)] + rng.uniform(0, 2, (n, 3))          # voxels
    vol = brain_volume_vox * np.exp(rng.uniform(np.log(volume_fraction[0]), np.log(volume_fraction[1]), n))
    aspect = np.exp(rng.uniform(-0.55, 0.55, (n, 3)))
    radii = ((3 * vol / (4 * np.pi)) ** (1 / 3))[:, None] * aspect / np.prod(aspect, 1, keepdims=True) ** (1 / 3)
    radii = radii * vs.mean() / vs                                                       # voxels per axis
    bone = rng.random(n) < p_bone
    values = np.where(bone, rng.normal(-2.0, 0.5, n), rng.normal(chi_mean, chi_sd, n)).astype(np.float32)
    rots = np.stack([rotation_matrix(rng.uniform(0, np.pi, 3)) for _ in range(n)])
    # quadratic forms Q = R diag(1/r^2) R^T: inside <=> (x-c)^T Q (x-c) <= 1
    q = np.einsum("nij,nj,nkj->nik", rots, 1.0 / radii ** 2, rots)
    cshape = np.minimum(shape, grid)
    step = shape / cshape
    axes = [((torch.arange(int(m), device=dev, dtype=torch.float32) + 0.5) * float(st) - 0.5) for m, st in zip(cshape, step)]
    last = torch.zeros(tuple(int(m) for m in cshape), dtype=torch.int64, device=dev)
    qt = torch.as_tensor(q, dtype=torch.float32, device=dev)
    ct = torch.as_tensor(centres, dtype=torch.float32, device=dev)
    for e in range(n):   # one small fused op per ellipsoid on the coarse grid
        d = [(axes[a] - ct[e, a]).view([-1 if b == a else 1 for b in range(3)]) for a in range(3)]
        Q = qt[e]
        f = (Q[0, 0] * d[0] * d[0] + Q[1, 1] * d[1] * d[1] + Q[2, 2] * d[2] * d[2]
             + 2 * (Q[0, 1] * d[0] * d[1] + Q[0, 2] * d[0] * d[2] + Q[1, 2] * d[1] * d[2]))
        last = torch.where(f <= 1.0, torch.tensor(e + 1, device=dev), last)
    if tuple(cshape) != tuple(shape):
        last = F.interpolate(last[None, None].float(), size=tuple(int(s) for s in shape), mode="nearest")[0, 0].long()
    vals = torch.cat([torch.tensor([float("nan")], device=dev), torch.as_tensor(values, device=dev)])
    painted = vals[last]
    write = (last > 0) & ~keep_out
    chi_ext[write] = painted[write]
    return n


def harmonic_polynomial(shape: Sequence[int], rng: np.random.Generator, amplitude_ppm: float, device=None) -> torch.Tensor:
    """Random harmonic polynomial up to order 2 (shim-like field; Laplacian = 0), normalised so the
    largest |coefficient-term| over the FOV is ``amplitude_ppm``. Shape ``shape``, float32."""
    x, y, z = [torch.linspace(-1, 1, int(n), device=device).view([-1 if a == ax else 1 for a in range(3)])
               for ax, n in enumerate(shape)]
    terms = [x, y, z, x * y, x * z, y * z, x * x - y * y, 2 * z * z - x * x - y * y]
    c = rng.standard_normal(len(terms)) * amplitude_ppm / 3
    out = torch.zeros(tuple(int(s) for s in shape), device=device)
    for ci, t in zip(c, terms):
        out += float(ci) * t
    return out


def gaussian_blur(x: torch.Tensor, sigma_vox: float) -> torch.Tensor:
    """Separable Gaussian blur of an (i, j, k) tensor (std ``sigma_vox`` voxels, zero boundary)."""
    import torch.nn.functional as F

    if sigma_vox <= 0:
        return x
    r = max(1, int(np.ceil(3 * sigma_vox)))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-0.5 * (t / sigma_vox) ** 2)
    g = g / g.sum()
    y = x[None, None]
    for ax in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + ax] = 2 * r + 1
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - ax)] = pad[2 * (2 - ax) + 1] = r
        y = F.conv3d(F.pad(y, pad), g.view(shape))
    return y[0, 0]
