"""Multi-echo phase -> total field [ppm]: offset removal, temporal unwrapping, weighted least squares.

Input: wrapped phase [rad] of shape (i, j, k, echo), optional magnitude of the same shape,
echo times [s], B0 [T]. Steps:

1. Sign: the phase is multiplied by ``sign`` (+1 or -1). The library's convention is that a
   positive field [ppm] (paramagnetic shift) gives phase = +2 pi f TE; scanners that store
   the conjugate need ``sign=-1``.
2. Frequency seed: the phase difference of echoes 1 and 2 (angle of z2 conj(z1); the coil phase
   offset cancels) is unwrapped spatially (:mod:`.unwrap`) and divided by TE2 - TE1.
   With one echo, echo 1 is unwrapped and the phase offset is assumed to be 0.
3. Phase offset (``offset``):
   * ``'mcpc3ds'`` (default; Eckstein et al. MRM 2018, MCPC-3D-S): phi0 = echo-1 phase minus
     omega*TE1, smoothed as a complex, magnitude-weighted field (Gaussian, ``sigma_mm``) and
     removed from every echo; then a fit through the origin.
   * ``'fit'``: the offset is a fitted intercept of the weighted line (echo 1 unwrapped spatially).
   * ``'none'``: no offset (fit through the origin).
4. Temporal unwrapping: echo by echo, phi_e + 2 pi n with n chosen to be nearest to the
   prediction of the fit to the earlier echoes.
5. Weighted least squares over echoes with weights magnitude^2 (the phase noise variance of an
   echo is 1/SNR^2, so these are SNR^2 weights; uniform without magnitude).
   omega [rad/s] -> f [Hz] = omega / 2 pi -> field [ppm] = f / (42.576 B0).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from ..errors import QSMInputError
from ..units import hz_to_ppm
from .unwrap import TWO_PI, unwrap, wrap

Vec3 = Sequence[float]


def _smooth_complex(z: np.ndarray, mask: np.ndarray, sigma_vox: Sequence[float]) -> np.ndarray:
    """Gaussian smoothing of a complex field inside ``mask`` (normalised convolution)."""
    w = mask.astype(np.float64)
    re = ndimage.gaussian_filter(np.where(mask, z.real, 0), sigma_vox, mode="nearest")
    im = ndimage.gaussian_filter(np.where(mask, z.imag, 0), sigma_vox, mode="nearest")
    nw = ndimage.gaussian_filter(w, sigma_vox, mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(nw > 1e-6, (re + 1j * im) / np.maximum(nw, 1e-6), 0)


def _fit(phases: list[np.ndarray], tes: Sequence[float], weights: list[np.ndarray], intercept: bool):
    """Per-voxel weighted LS of phase [rad] vs TE [s]: returns (omega [rad/s], offset [rad])."""
    t = np.asarray(tes, dtype=np.float64)
    sw = sum(weights)
    swt = sum(w * ti for w, ti in zip(weights, t))
    swtt = sum(w * ti * ti for w, ti in zip(weights, t))
    swp = sum(w * p for w, p in zip(weights, phases))
    swtp = sum(w * ti * p for w, ti, p in zip(weights, t, phases))
    with np.errstate(invalid="ignore", divide="ignore"):
        if intercept and len(phases) >= 2:
            det = sw * swtt - swt * swt
            omega = np.where(det > 0, (sw * swtp - swt * swp) / np.where(det > 0, det, 1), 0)
            off = np.where(sw > 0, (swp - omega * swt) / np.where(sw > 0, sw, 1), 0)
        else:
            omega = np.where(swtt > 0, swtp / np.where(swtt > 0, swtt, 1), 0)
            off = np.zeros_like(omega)
    return omega, off


def fit_total_field(phase: np.ndarray, tes_s: Sequence[float], b0_t: float, mask: np.ndarray,
                    magnitude: Optional[np.ndarray] = None, voxel_size: Vec3 = (1, 1, 1),
                    unwrapper: str = "region", offset: str = "mcpc3ds", sign: int = 1,
                    sigma_mm: float = 2.0) -> tuple[np.ndarray, dict]:
    """Total field [ppm] (3D float32, 0 outside ``mask``) from wrapped multi-echo phase [rad].

    ``phase`` is (i, j, k) or (i, j, k, echo); ``tes_s`` the echo times in seconds (increasing).
    Returns ``(field_ppm, info)`` with ``info`` holding the offset [rad] and the fit residual [rad].
    """
    ph = np.asarray(phase, dtype=np.float64)
    if ph.ndim == 3:
        ph = ph[..., None]
    ne = ph.shape[3]
    tes = [float(t) for t in np.ravel(tes_s)]
    if len(tes) != ne:
        raise QSMInputError("echo times", f"{len(tes)} echo time(s) given for {ne} echo(es) in the phase",
                            "give one TE (in seconds) per echo, in echo order")
    if any(t <= 0 for t in tes) or any(b <= a for a, b in zip(tes, tes[1:])):
        raise QSMInputError("echo times", f"must be positive and increasing, got {tes}",
                            "give the TEs in seconds in echo order (e.g. 0.004 0.008 0.012)")
    if sign not in (1, -1):
        raise QSMInputError("phase sign", f"must be +1 or -1, got {sign}", "use --phase-sign 1 or -1")
    if offset not in ("mcpc3ds", "fit", "none"):
        raise QSMInputError("phase offset", f"unknown option {offset!r}", "use 'mcpc3ds', 'fit' or 'none'")
    m = np.asarray(mask, bool) & np.all(np.isfinite(ph), axis=3)
    ph = sign * np.nan_to_num(ph)
    if magnitude is not None:
        mag = np.asarray(magnitude, dtype=np.float64)
        if mag.ndim == 3:
            mag = mag[..., None]
        if mag.shape != ph.shape:
            raise QSMInputError("magnitude", f"shape {mag.shape} does not match the phase shape {ph.shape}",
                                "pass a magnitude with the same grid and number of echoes as the phase")
        mag = np.nan_to_num(np.abs(mag))
    else:
        mag = np.ones_like(ph)
    z = mag * np.exp(1j * ph)
    info: dict = {"offset": offset, "unwrapper": unwrapper, "sign": sign, "echoes": ne}

    # 2. frequency seed [rad/s]
    if ne >= 2:
        d = unwrap(np.angle(z[..., 1] * np.conj(z[..., 0])), unwrapper, m, voxel_size)
        omega0 = d / (tes[1] - tes[0])
    else:
        omega0 = unwrap(wrap(ph[..., 0]), unwrapper, m, voxel_size) / tes[0]

    # 3. phase offset
    off0 = np.zeros(ph.shape[:3])
    if offset == "mcpc3ds" and ne >= 2:
        raw = z[..., 0] * np.exp(-1j * omega0 * tes[0])
        sig = [sigma_mm / float(h) for h in voxel_size]
        off0 = np.angle(_smooth_complex(raw, m, sig))
        ph = wrap(ph - off0[..., None])
    info["phase_offset_rad"] = np.where(m, off0, 0).astype(np.float32)

    # 4. temporal unwrapping, echo by echo
    wts = [mag[..., e] ** 2 for e in range(ne)]
    if offset == "fit":
        base = unwrap(wrap(ph[..., 0]), unwrapper, m, voxel_size)
        pred = [base + omega0 * (t - tes[0]) for t in tes]
    else:
        pred = [omega0 * t for t in tes]
    unw: list[np.ndarray] = []
    omega, off = omega0, np.zeros_like(omega0)
    for e in range(ne):
        target = pred[e] if e < 2 else omega * tes[e] + off
        unw.append(ph[..., e] + TWO_PI * np.round((target - ph[..., e]) / TWO_PI))
        if e >= 1:
            omega, off = _fit(unw, tes[:e + 1], wts[:e + 1], intercept=(offset == "fit"))

    # 5. weighted least squares
    omega, off = _fit(unw, tes, wts, intercept=(offset == "fit"))
    if ne == 1:
        omega = unw[0] / tes[0]
    res = np.sqrt(sum(w * (p - omega * t - off) ** 2 for w, p, t in zip(wts, unw, tes)) /
                  np.maximum(sum(wts), 1e-12))
    info["fit_residual_rad"] = np.where(m, res, 0).astype(np.float32)
    field = hz_to_ppm(omega / TWO_PI, b0_t)
    return np.where(m, field, 0).astype(np.float32), info
