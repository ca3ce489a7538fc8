"""TV refinement of the VN's chi for user-supplied local fields, weighted by the field's non-dipolar content.

The VN's regulariser learnt the textures of the synthetic training heads. Where the measured field
holds components that no susceptibility distribution explains (noise, residual background,
anisotropy), the VN turns them into chi. The refinement solves

    chi = argmin 1/2 ||D chi - f||^2 + lam TV(chi) + mu/2 ||chi - chi_VN||^2

(:func:`nextqsm.methods.tv.tv_admm` with ``prior``; unweighted data term, field zero outside the
mask), with ``lam = l(c) * rms(f)``: the TV weight is proportional to the field's amplitude (so the
result scales with the input) and grows with ``c``, the field's magic-cone energy ratio
(:func:`nextqsm.models.vn.cone_energy`: the power of the zero-padded field where |D| < 0.1, relative
to its share of the spectrum; ~0.04 for a clean simulated local field, ~1 for white noise).
``l(c) = coef * clip(c, c_min, c_max) ** power``; the shipped ``coef``, ``power``, ``mu`` and clip range
were fitted on synthetic local fields only (manifest ``defaults.refine_local``; how:
``benchmarks/results_nextqsm.md``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

Vec3 = Sequence[float]
RHO_L = 1.1   # ADMM penalty per unit of l (see tv_refine)
#: l(c) and mu used when ``refine=True`` is asked for with weights whose manifest has no ``defaults.refine_local``
#: (the values fitted for the shipped VN, session 10).
DEFAULT_REFINE = {"method": "tv", "coef": 0.309, "power": 1.03, "c_range": [0.035, 0.516], "mu": 0.03}


def nondipolar_fraction(field: np.ndarray, mask: np.ndarray, voxel_size: Vec3, b0_dir: Vec3,
                        pad: Optional[int] = None) -> float:
    """Magic-cone energy ratio ``c`` (unitless) of ``field`` [ppm] on ``mask``, as the VN measures it."""
    import torch

    from .vn import batch_kernels, cone_energy

    m = np.asarray(mask) > 0
    f = torch.from_numpy(np.where(m, field, 0).astype(np.float32))[None, None]
    with torch.no_grad():
        k = batch_kernels(f.shape[-3:], tuple(map(float, voxel_size)), tuple(map(float, b0_dir)), 1, pad)
        return float(cone_energy(f, k).reshape(-1)[0])


def refine_weight(c: float, coef: float, power: float, c_range: Sequence[float]) -> float:
    """Scale-free TV weight ``l(c) = coef * clip(c, *c_range) ** power`` (lam = l * rms of the field)."""
    lo, hi = float(c_range[0]), float(c_range[1])
    return float(coef) * float(np.clip(c, lo, hi)) ** float(power)


def tv_refine(field: np.ndarray, mask: np.ndarray, prior: np.ndarray, voxel_size: Vec3, b0_dir: Vec3,
              l: float, mu: float, device: str = "auto") -> tuple[np.ndarray, float]:
    """TV refinement of ``prior`` (chi [ppm]) against the local ``field`` [ppm] on ``mask``.

    ``l``: scale-free TV weight (lam = l * RMS of the field in the mask, ppm); ``mu``: prior weight
    (unitless). Returns (chi [ppm] zero outside the mask, lam used).
    """
    from ..methods.tv import tv_admm

    m = np.asarray(mask) > 0
    rms = float(np.sqrt(np.mean(np.square(np.asarray(field, np.float64)[m])))) if m.any() else 0.0
    lam = float(l) * rms
    if lam <= 0.0:
        raise ValueError("tv_refine needs l > 0 and a non-zero field in the mask")
    # ADMM's gradient-split penalty mu1 = rho * lam is kept scale-free (mu1 = RHO_L * l), so that the iterates,
    # not only the minimiser, scale with the field; at the challenge's RMS (0.011 ppm) rho is tv_admm's 100
    rho = RHO_L / rms
    chi = tv_admm(field, m, voxel_size, b0_dir, lam=lam, rho=rho, prior=prior, prior_weight=float(mu), device=device)
    return chi, lam
