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


def dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    """Binary dilation of a bool (i, j, k) tensor by a (2r+1)^3 cube: separable, by OR-ing shifted
    slices (a few cheap bool passes per axis)."""
    if r <= 0:
        return mask
    x = mask
    for ax in range(3):
        out = x.clone()
        n = x.shape[ax]
        for s in range(1, min(int(r), n - 1) + 1):
            out.narrow(ax, s, n - s).logical_or_(x.narrow(ax, 0, n - s))
            out.narrow(ax, 0, n - s).logical_or_(x.narrow(ax, s, n - s))
        x = out
    return x


def erode(mask: torch.Tensor, r: int) -> torch.Tensor:
    """Binary erosion by a (2r+1)^3 cube."""
    return ~dilate(~mask, r) if r > 0 else mask


def random_ellipsoids(chi_ext: torch.Tensor, keep_out: torch.Tensor, voxel_size: Sequence[float],
                      rng: np.random.Generator, n: int = 100, brain_volume_vox: float | None = None,
                      volume_fraction=(0.04, 0.25), chi_mean: float = 9.2, chi_sd: float = 1.5,
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
    if n <= 0 or bool(keep_out.all()):
        return 0
    # centres: uniform in the FOV, rejected inside keep_out (lookup of candidate batches)
    ko = keep_out.cpu().numpy()
    centres = np.zeros((0, 3))
    for _ in range(50):
        c = rng.uniform(0, 1, (4 * n, 3)) * shape - 0.5
        ok = ~ko[tuple(np.clip(np.round(c).astype(int), 0, shape - 1).T)]
        centres = np.concatenate([centres, c[ok]])[:n]
        if len(centres) == n:
            break
    n = len(centres)
    if n == 0:   # (almost) the whole FOV is keep-out, e.g. a patch inside the brain: nothing to place
        return 0
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
    step = shape / cshape                       # full-res voxels per coarse voxel
    last = np.zeros(tuple(int(m) for m in cshape), dtype=np.int16)
    qi = np.linalg.inv(q)                       # half-extent along axis a: sqrt(Qinv_aa)
    for e in range(n):   # each ellipsoid evaluated on its bounding box of the coarse grid only (numpy:
        cc = (centres[e] + 0.5) / step - 0.5   # many small arrays, cheaper than torch dispatch)
        half = np.sqrt(np.diag(qi[e])) / step + 1
        lo = np.maximum(np.floor(cc - half).astype(int), 0)
        hi = np.minimum(np.ceil(cc + half).astype(int) + 1, cshape)
        if np.any(hi <= lo):
            continue
        d = [((np.arange(lo[a], hi[a], dtype=np.float32) + 0.5) * np.float32(step[a]) - 0.5
              - np.float32(centres[e, a])).reshape([-1 if b == a else 1 for b in range(3)]) for a in range(3)]
        Q = q[e].astype(np.float32)
        f = (Q[0, 0] * d[0] * d[0] + Q[1, 1] * d[1] * d[1] + Q[2, 2] * d[2] * d[2]
             + 2 * (Q[0, 1] * d[0] * d[1] + Q[0, 2] * d[0] * d[2] + Q[1, 2] * d[1] * d[2]))
        sub = last[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        sub[f <= 1.0] = e + 1
    last = torch.from_numpy(last.astype(np.int64)).to(dev)
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


def binomial_blur(x: torch.Tensor, passes: int = 1) -> torch.Tensor:
    """Separable [1, 2, 1]/4 blur of an (i, j, k) tensor, ``passes`` times (std ~0.71 voxel per pass
    in quadrature: 1 -> 0.71, 2 -> 1.0); zero outside the volume."""
    y = x
    for _ in range(int(passes)):
        for ax in range(3):
            n = y.shape[ax]
            out = y * 0.5
            out.narrow(ax, 1, n - 1).add_(y.narrow(ax, 0, n - 1), alpha=0.25)
            out.narrow(ax, 0, n - 1).add_(y.narrow(ax, 1, n - 1), alpha=0.25)
            y = out
    return y
