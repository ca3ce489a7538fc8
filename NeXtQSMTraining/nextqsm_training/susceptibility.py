"""Susceptibility sampling for hybrid brains (ppm, relative to CSF).

Decision: physically realistic ppm, not the paper's per-brain normalisation
--------------------------------------------------------------------------
The NeXtQSM paper filled each label with a random intensity from a prior and then normalised each
brain to zero mean with quartiles near -0.5 / 0.5. A network trained that way predicts chi up to
an unknown scale, yet our model must return **correct ppm on real data**. We therefore sample in
ppm, per label, from a two-component Gaussian mixture prior:

* with probability ``p_realistic`` (default 0.8): ``g * N(mu_c, sd_c)`` where ``(mu_c, sd_c)`` is
  the realistic range of the label's tissue class (:data:`labels.CLASS_PPM`: WM ~ -0.04, cortex
  ~ 0.03, caudate/putamen ~ 0.075, pallidum ~ 0.175, thalamus ~ 0.04, veins ~ 0.38 ...) and ``g`` a
  random **global scale** per brain (uniform in ``global_scale``, default 0.5-1.5, covering field
  strength / age / iron differences);
* otherwise: ``N(0, sd_wide)`` (default 0.1 ppm), a random-intensity component as in the paper,
  so the network cannot rely on anatomical contrast alone.

Left and right labels are drawn independently (realistic asymmetry). CSF stays near 0 (the QSM
reference). On top: smooth within-label texture (random low-resolution Gaussian field, amplitude
up to ``texture_ppm``), veins (tubes along random smooth curves, 0.25-0.45 ppm), optional lesions
(ellipsoids in the brain, +-0.02-0.08 ppm), microbleeds (spheres 0.5-1.5 ppm, paramagnetic) and
calcifications (spheres -0.4 to -1.2 ppm, diamagnetic). Optionally (``chi_blur`` in
``simulate.make_pair``) the brain's chi is blurred by a Gaussian of random width (:func:`partial_volume`).
Extra-cerebral classes (air, bone, marrow, soft tissue, venous sinuses) keep their physical values
(not globally scaled), with their own per-label jitter.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .labels import BRAIN_CLASSES, CLASS_PPM, Tissue, tissue_of


def sample_label_values(codes: Sequence[int], rng: np.random.Generator, global_scale=(0.5, 1.5),
                        p_realistic: float = 0.8, sd_wide: float = 0.1, realistic: bool = True) -> np.ndarray:
    """ppm per label code (float32, same order as ``codes``).

    ``realistic=False`` disables randomness: every label gets its class mean (for test heads).
    """
    g = rng.uniform(*global_scale) if realistic else 1.0
    out = np.zeros(len(codes), np.float32)
    for i, code in enumerate(codes):
        c = tissue_of(int(code))
        mu, sd = CLASS_PPM[c]
        if not realistic:
            out[i] = mu
        elif c in BRAIN_CLASSES and c != Tissue.VESSEL:
            out[i] = g * rng.normal(mu, sd) if rng.random() < p_realistic else rng.normal(0.0, sd_wide)
        elif c == Tissue.CSF:
            out[i] = rng.normal(mu, sd)
        elif c in (Tissue.VESSEL, Tissue.VENOUS_SINUS):
            out[i] = max(0.05, rng.normal(mu, sd))
        else:
            out[i] = rng.normal(mu, sd)
    return out


def smooth_field(rng: np.random.Generator, shape: Sequence[int], low: int, device=None) -> torch.Tensor:
    """Zero-mean unit-std smooth random field: ``low``^3 Gaussian noise upsampled (trilinear)."""
    n = torch.from_numpy(rng.standard_normal((1, 1, low, low, low)).astype(np.float32)).to(device)
    f = F.interpolate(n, size=tuple(int(s) for s in shape), mode="trilinear", align_corners=True)[0, 0]
    return (f - f.mean()) / (f.std() + 1e-6)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (std ``sigma`` voxels, truncated at 3 sigma) of an (i, j, k) tensor; zero outside."""
    if sigma <= 0:
        return x
    r = max(1, int(3.0 * sigma + 0.5))   # as scipy.ndimage.gaussian_filter(truncate=3)
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    y = x[None, None]
    for ax in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + ax] = k.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - ax)] = pad[2 * (2 - ax) + 1] = r
        y = F.conv3d(F.pad(y, pad), k.view(shape))
    return y[0, 0]


def partial_volume(chi: torch.Tensor, region: torch.Tensor, sigma: float) -> None:
    """Blur ``chi`` inside ``region`` in place with a Gaussian of std ``sigma`` voxels, normalised to the region
    (values outside it neither enter nor change): the partial-volume and point-spread smoothing of real chi maps,
    whose tissue boundaries are not the label maps' voxel-sharp steps."""
    if sigma <= 0:
        return
    w = region.to(chi.dtype)
    num, den = gaussian_blur(chi * w, sigma), gaussian_blur(w, sigma)
    chi.copy_(torch.where(region, num / den.clamp_min(1e-6), chi))


def add_texture(chi: torch.Tensor, region: torch.Tensor, rng: np.random.Generator, max_ppm: float = 0.02) -> None:
    """Add a smooth random texture (amplitude uniform in [0, ``max_ppm``]) inside ``region`` in place."""
    amp = rng.uniform(0, max_ppm)
    if amp <= 0:
        return
    low = int(rng.integers(8, 24))
    chi += amp * smooth_field(rng, chi.shape, low, chi.device) * region


def paint_ellipsoid(vol: torch.Tensor, centre: Sequence[float], radii: Sequence[float], value: float,
                    allowed: torch.Tensor | None = None, add: bool = False, rot: np.ndarray | None = None) -> int:
    """Write ``value`` (or add it) into the voxels of an ellipsoid (centre and radii in voxels),
    restricted to ``allowed`` (bool, same shape) when given. Works on the ellipsoid's bounding box
    only. Returns the number of voxels written."""
    shape = vol.shape
    rmax = float(max(radii))
    lo = [max(0, int(np.floor(c - rmax))) for c in centre]
    hi = [min(n, int(np.ceil(c + rmax)) + 1) for c, n in zip(centre, shape)]
    if any(h <= l for l, h in zip(lo, hi)):
        return 0
    dev = vol.device
    ax = [torch.arange(l, h, device=dev, dtype=torch.float32) - float(c) for l, h, c in zip(lo, hi, centre)]
    gx, gy, gz = torch.meshgrid(*ax, indexing="ij")
    if rot is not None:
        r = torch.as_tensor(np.asarray(rot, np.float32), device=dev)
        gx, gy, gz = (r[0, 0] * gx + r[1, 0] * gy + r[2, 0] * gz, r[0, 1] * gx + r[1, 1] * gy + r[2, 1] * gz,
                      r[0, 2] * gx + r[1, 2] * gy + r[2, 2] * gz)
    inside = (gx / radii[0]) ** 2 + (gy / radii[1]) ** 2 + (gz / radii[2]) ** 2 <= 1.0
    sl = tuple(slice(l, h) for l, h in zip(lo, hi))
    if allowed is not None:
        inside &= allowed[sl]
    sub = vol[sl]
    if add:
        sub += inside * value
    else:
        sub[inside] = value
    return int(inside.sum())


def region_points(region: torch.Tensor) -> np.ndarray:
    """Candidate points (voxel indices, every 2nd voxel) of a bool region, for random placement."""
    return torch.nonzero(region[::2, ::2, ::2]).cpu().numpy() * 2


def _random_points_in(region: torch.Tensor, rng: np.random.Generator, n: int, points=None) -> np.ndarray:
    idx = region_points(region) if points is None else points
    if len(idx) == 0 or n == 0:
        return np.zeros((0, 3))
    return idx[rng.integers(0, len(idx), n)] + rng.uniform(0, 1, (n, 3))


def add_veins(chi: torch.Tensor, region: torch.Tensor, rng: np.random.Generator, voxel_size: Sequence[float],
              n_range=(4, 20), value=(0.25, 0.45), radius_mm=(0.6, 1.6), points=None) -> None:
    """Veins: tubes along random smooth curves (random walks with momentum), inside ``region``.

    Each vein: random start in the region, 20-90 mm long, radius ``radius_mm``, value ``value`` ppm.
    Rasterised by scattering dense curve points and dilating with a max-pool.
    """
    n = int(rng.integers(n_range[0], n_range[1] + 1))
    vs = np.asarray(voxel_size, float)
    shape = np.array(chi.shape)
    starts = _random_points_in(region, rng, n, points)
    for p0 in starts:
        length = rng.uniform(20, 90)
        step = 0.5 * vs.min()
        k = int(length / step)
        d = rng.standard_normal(3)
        d /= np.linalg.norm(d)
        turns = rng.standard_normal((k, 3)) * 0.08
        dirs = np.empty((k, 3))
        for i in range(k):   # momentum walk (cheap: k <= ~200)
            d = d + turns[i]
            d /= np.linalg.norm(d)
            dirs[i] = d
        pts = p0 + np.cumsum(dirs * step / vs, axis=0)
        pts = np.round(pts).astype(np.int64)
        ok = np.all((pts >= 0) & (pts < shape), axis=1)
        pts = pts[ok]
        if len(pts) == 0:
            continue
        r = max(1, int(round(rng.uniform(*radius_mm) / vs.min())))
        lo = np.maximum(pts.min(0) - r, 0)
        hi = np.minimum(pts.max(0) + r + 1, shape)
        sub = torch.zeros(tuple(int(h - l) for l, h in zip(lo, hi)), device=chi.device)
        q = torch.as_tensor(pts - lo, device=chi.device)
        sub[q[:, 0], q[:, 1], q[:, 2]] = 1.0
        if r > 0:
            sub = F.max_pool3d(sub[None, None], 2 * r + 1, stride=1, padding=r)[0, 0]
        sl = tuple(slice(int(l), int(h)) for l, h in zip(lo, hi))
        m = (sub > 0) & region[sl]
        chi[sl][m] = float(rng.uniform(*value))


def add_spots(chi: torch.Tensor, region: torch.Tensor, rng: np.random.Generator, voxel_size: Sequence[float],
              n_range=(0, 4), value=(0.5, 1.5), radius_mm=(1.0, 2.5), add: bool = False, points=None) -> int:
    """Small spheres (microbleeds: positive ``value``; calcifications: negative) inside ``region``."""
    n = int(rng.integers(n_range[0], n_range[1] + 1))
    vs = np.asarray(voxel_size, float)
    count = 0
    for c in _random_points_in(region, rng, n, points):
        r = rng.uniform(*radius_mm) / vs
        count += paint_ellipsoid(chi, c, r, float(rng.uniform(*value)), allowed=region, add=add)
    return count


def add_lesions(chi: torch.Tensor, region: torch.Tensor, rng: np.random.Generator, voxel_size: Sequence[float],
                n_range=(0, 3), delta=(0.02, 0.08), radius_mm=(3.0, 10.0), points=None) -> None:
    """Ellipsoidal lesions inside ``region`` that shift chi by +-``delta`` ppm (both signs)."""
    from .deform import rotation_matrix

    n = int(rng.integers(n_range[0], n_range[1] + 1))
    vs = np.asarray(voxel_size, float)
    for c in _random_points_in(region, rng, n, points):
        r = rng.uniform(*radius_mm, 3) / vs
        v = float(rng.uniform(*delta) * rng.choice([-1.0, 1.0]))
        paint_ellipsoid(chi, c, r, v, allowed=region, add=True, rot=rotation_matrix(rng.uniform(0, np.pi, 3)))
