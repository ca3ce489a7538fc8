"""QSM accuracy metrics, with the QSM challenge 2.0 definitions as QSM-CI implements them.

All metrics compare ``x`` (reconstruction) with ``ref`` (truth) inside ``mask``, in ppm.
Segmentation labels (for the region metrics) follow the challenge-2.0/QSM-CI head phantom
(:data:`nextqsm.phantom.LABELS`): 1-6 deep grey nuclei, 7 thalamus, 8 WM, 9 GM, 11 blood.

* nrmse: 100 * ||(x - mean x) - (ref - mean ref)|| / ||ref - mean ref||  (demeaned, %).
* nrmse_detrend: same after the linear fit x ~ slope*ref + intercept is inverted.
* nrmse_tissue / nrmse_blood / nrmse_dgm: detrended NRMSE in tissue (7, 8, 9), in blood
  (label 11 in the mask, dilated by a 3x3x3 cube) and in deep grey matter (1-6).
* dgm_slope: |1 - slope| of the region means of labels 1-6 (deep-grey linearity).
* hfen: 100 * ||LoG(x) - LoG(ref)|| / ||LoG(ref)|| (sigma 1.5 voxels), in the mask.
* xsim: SSIM tuned for QSM (5^3 windows, L=1, K1=0.01, K2=0.001), on the maps as given.
* xsim_ref: the same after referencing both maps to their own mean inside the mask (the
  convention of the demeaned NRMSE). The mean susceptibility of the brain is not observable
  after background-field removal (a uniform chi over the mask makes a field that is harmonic
  inside it), yet XSIM's luminance term (C1 = 1e-4 ppm^2) reacts to offsets of ~0.01 ppm, so
  raw XSIM partly scores the arbitrary reference of each map.
* correlation: Pearson r in the mask.
* source_metrics (not a challenge metric): a small strong source's mean, contrast against its
  surroundings, magnetic moment kept and surrounding streaking (label 16, the calcification).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares y = slope * x + intercept."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.size < 2 or np.ptp(x) == 0:
        return 0.0, 0.0
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def nrmse_both(x: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(demeaned NRMSE %, detrended NRMSE %) inside ``mask``."""
    m = np.asarray(mask) > 0
    if not m.any():
        return math.nan, math.nan
    r = ref[m].astype(np.float64) - ref[m].mean()
    a = x[m].astype(np.float64) - x[m].mean()
    nr = float(np.linalg.norm(r))
    if nr < 1e-30:
        return math.nan, math.nan
    n1 = 100.0 * float(np.linalg.norm(a - r)) / nr
    slope, intercept = _fit(r, a)
    if abs(slope) < 1e-30:
        return n1, n1
    corrected = (a - intercept) / slope
    return n1, 100.0 * float(np.linalg.norm(corrected - r)) / nr


def nrmse(x: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    """Demeaned NRMSE in % inside ``mask``."""
    return nrmse_both(x, ref, mask)[0]


def nrmse_detrend(x: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    """Linearly detrended NRMSE in % inside ``mask``."""
    return nrmse_both(x, ref, mask)[1]


def correlation(x: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    m = np.asarray(mask) > 0
    if m.sum() < 2:
        return 0.0
    return float(np.corrcoef(x[m].astype(np.float64), ref[m].astype(np.float64))[0, 1])


def hfen(x: np.ndarray, ref: np.ndarray, mask: np.ndarray, sigma: float = 1.5) -> float:
    """High-frequency error norm in % (Laplacian of Gaussian, sigma in voxels)."""
    m = np.asarray(mask) > 0
    lx = ndi.gaussian_laplace(x.astype(np.float64), sigma=sigma, truncate=5.0)
    lr = ndi.gaussian_laplace(ref.astype(np.float64), sigma=sigma, truncate=5.0)
    d = float(np.linalg.norm(lr[m]))
    return 100.0 * float(np.linalg.norm(lx[m] - lr[m])) / d if d > 1e-30 else math.nan


XSIM_C1, XSIM_C2 = (0.01 * 1.0) ** 2, (0.001 * 1.0) ** 2   # (K1 L)^2, (K2 L)^2 with L = 1 ppm


def xsim(x: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    """XSIM (Milovic et al. 2024): SSIM with 5x5x5 windows, L=1, K1=0.01, K2=0.001, truncated at edges."""
    c1, c2 = XSIM_C1, XSIM_C2
    a = x.astype(np.float64)
    b = ref.astype(np.float64)

    def mean5(v):
        return ndi.uniform_filter(v, size=5, mode="constant", cval=0.0)

    cnt = mean5(np.ones_like(a))
    cnt[cnt == 0] = 1.0
    mu_a, mu_b = mean5(a) / cnt, mean5(b) / cnt
    va = mean5(a * a) / cnt - mu_a ** 2
    vb = mean5(b * b) / cnt - mu_b ** 2
    cov = mean5(a * b) / cnt - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a ** 2 + mu_b ** 2 + c1) * (va + vb + c2)
    valid = (np.asarray(mask) > 0) & (den > 0)
    return float(np.mean(num[valid] / den[valid])) if valid.any() else 0.0


def referenced(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``x`` minus its mean inside ``mask``, zero outside (float64)."""
    m = np.asarray(mask) > 0
    a = np.asarray(x, np.float64)
    return np.where(m, a - (a[m].mean() if m.any() else 0.0), 0.0)


def xsim_ref(x: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    """:func:`xsim` of the two maps each referenced to its mean inside ``mask``."""
    return xsim(referenced(x, mask), referenced(ref, mask), mask)


def dgm_slope_error(x: np.ndarray, ref: np.ndarray, seg: np.ndarray, labels=(1, 2, 3, 4, 5, 6)) -> float:
    """|1 - slope| of region means (recon vs truth) over the deep-grey labels."""
    t, r = [], []
    for lab in labels:
        sel = seg == lab
        if sel.any():
            t.append(float(ref[sel].mean()))
            r.append(float(x[sel].mean()))
    if len(t) < 2:
        return math.nan
    return abs(1.0 - _fit(np.array(t), np.array(r))[0])


def challenge_metrics(x: np.ndarray, ref: np.ndarray, mask: np.ndarray, seg: np.ndarray | None = None) -> dict[str, float]:
    """All metrics as a dict; region metrics only when ``seg`` is given."""
    m = np.asarray(mask) > 0
    n1, n2 = nrmse_both(x, ref, m)
    out = {"nrmse": n1, "nrmse_detrend": n2, "hfen": hfen(x, ref, m), "xsim": xsim(x, ref, m),
           "xsim_ref": xsim_ref(x, ref, m), "correlation": correlation(x, ref, m)}
    if seg is not None:
        seg = np.rint(seg).astype(np.int32)
        out["nrmse_tissue"] = nrmse_both(x, ref, m & np.isin(seg, (7, 8, 9)))[1]
        blood = ndi.binary_dilation(m & (seg == 11), structure=np.ones((3, 3, 3), bool))
        out["nrmse_blood"] = nrmse_both(x, ref, blood)[1]
        out["nrmse_dgm"] = nrmse_both(x, ref, m & np.isin(seg, (1, 2, 3, 4, 5, 6)))[1]
        out["dgm_slope_error"] = dgm_slope_error(x, ref, seg)
    return out


def source_metrics(x: np.ndarray, ref: np.ndarray, seg: np.ndarray, mask: np.ndarray,
                   label: int = 16) -> dict[str, float]:
    """A small strong source ``seg == label`` (core C): how much of it a reconstruction keeps.

    Near region R = C dilated by 1 voxel, shell = C dilated by 4 voxels minus R (dilations by 3x3x3
    cubes), both inside ``mask`` (e.g. V-SHARP's erosion leaves voxels out); e = x - ref.

    * ``mean``: mean of ``x`` in C (ppm; ``truth_mean`` the same for ``ref``);
    * ``contrast``: (mean of x in C - median of x in the shell) / the same for ``ref``: what an ROI
      reading of the source against its surroundings keeps (blur and shrinkage lower it);
    * ``moment``: the fraction of the source's magnetic moment kept, (S + E) / S, with S = sum over C
      of (ref - median of ref in the shell) and E = sum over R of (e - median of e in the shell).
      Outside a compact source its field is that of its moment, so a data-consistent inversion keeps
      the moment where it only blurs the source by a voxel (E = 0); below 1 the prior shrank it.
      Smooth errors in the tissue around a small source enter E too, so read it with ``contrast``;
    * ``streak``: SD of e in the shell (ppm): streaking and blooming around the source.
    """
    core = seg == label
    if not core.any():
        raise ValueError(f"source_metrics: no voxel has label {label}")
    cube = np.ones((3, 3, 3), bool)
    d1 = ndi.binary_dilation(core, cube)
    shell = ndi.binary_dilation(core, cube, iterations=4) & ~d1 & mask
    near = d1 & mask
    e = x - ref
    true_moment = float((ref[core] - np.median(ref[shell])).sum())
    err_moment = float((e[near] - np.median(e[shell])).sum())
    in_core = core & mask
    return {"mean": float(x[in_core].mean()), "truth_mean": float(ref[core].mean()),
            "contrast": float((x[in_core].mean() - np.median(x[shell]))
                              / (ref[core].mean() - np.median(ref[shell]))),
            "moment": (true_moment + err_moment) / true_moment, "streak": float(e[shell].std()),
            "core_voxels": int(core.sum())}
