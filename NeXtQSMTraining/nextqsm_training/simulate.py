"""One hybrid training pair: label map -> deformation -> chi -> local and total field.

    labels (SynthSeg / FreeSurfer / procedural) --deform--> labels on the output grid
      -> chi_tissue (ppm, per-label prior + texture + veins + lesions + bleeds + calcifications)
      -> mask (brain + sulcal CSF, with erosion / dilation variations)
      -> external chi: head classes outside the mask (air 0-label ~ +9.2, bone ~ -2 ...)
         + ~100 random ellipsoids outside the dilated mask, then a [1,2,1] partial-volume blur
         (re-masked), which keeps the discrete dipole field free of Gibbs ringing in the brain
      -> local = D * (chi * mask), total = D * chi_all (zero padded FFT), both masked
      -> optional: harmonic low-order field added to total, Gaussian noise (white, or partly
         spatially correlated: ``noise_corr``)
      -> optional (``wm_anisotropy``): the field of an anisotropic susceptibility in white matter
         added to both fields, while the target ``chi`` stays the mean (isotropic) susceptibility

White-matter anisotropy: myelinated fibres have chi_par - chi_perp = dchi ~ -0.01 to -0.03 ppm
(Liu, MRM 2010; Li et al., NeuroImage 2012); the field of the tensor chi = chi_mean I + dchi (n n^T - I/3)
(STI forward model, :func:`anisotropy_field`) departs from the isotropic dipole model by a smooth,
fibre-orientation dependent part that single-orientation QSM cannot explain: one of the model errors
in real local fields (COSMOS, which ignores it, differs from chi_33 by 50 % NRMSE on the 2016
challenge). Training with it teaches the VN not to turn that part into chi.

Correlated noise: the 2016 challenge's local field departs from the dipole field of its own COSMOS
map by a residual of ~0.56x the field's RMS of which 60 % survives a 1-voxel Gaussian smoothing
(white noise: 15 %); networks trained with white noise alone keep such smooth perturbations as
structure. ``noise_corr`` adds a smooth part (the same in the local and the total field).

Background field on a finer grid (``bg_supersample`` n > 1): the external sources are drawn on an n-times finer
grid (the full-resolution label map through the same deformation; the ellipsoids, >= 2 mm from the brain,
nearest-upsampled), their dipole field computed there and averaged over each output voxel
(:func:`block_mean_field`), as the session-11 test heads do (``heads.BG_FINE_MM``). On the output grid the field of
sources touching the mask with a staircase edge is not harmonic inside the brain for a tilted B0: V-SHARP leaves a
median 15.6 % of the local field from the pure background of six tilted 64^3 pairs, 10.8 % with n = 4 (8.6 / 10.4 %
along z; benchmarks/results_generator_oblique.md). A tilted 64^3 pair then takes ~4.4 CPU s instead of ~0.2.

All arrays are (i, j, k) float32 in ppm, RAS+ voxel axes (B0 (0, 0, 1) = head foot->head).
Deterministic per ``seed`` on CPU.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from nextqsm.dipole import padded_shape

from . import deform as dfm
from .external import dilate, erode, binomial_blur, harmonic_polynomial, random_ellipsoids
from .label_sources import LabelSource, expand_sources
from .labels import Tissue, VENTRICLE_LABELS, is_brain_label, is_mask_label, tissue_lut
from .susceptibility import (add_lesions, add_spots, add_texture, add_veins, partial_volume, region_points,
                             sample_label_values, smooth_field)

#: Default options of :func:`make_pair` (override any of them as keyword arguments).
DEFAULTS: dict[str, Any] = dict(
    voxel_size=None,          # None: fit the brain into the grid (FOV = brain extent x fov_factor)
    fov_factor=(1.15, 1.4),
    anisotropy=(0.3, 0.8, 1.25),   # (probability, min, max) per-axis voxel-size factor
    b0_tilt_deg=(0.3, 25.0),       # (probability, max angle) of a random B0 tilt
    rotation_deg=15.0, scaling=0.12, shear=0.04, translation_mm=6.0,
    elastic_mm=3.0,
    global_scale=(0.5, 1.5), p_realistic=0.8,
    texture_ppm=0.02,
    veins=(4, 20), lesions=(0, 3), microbleeds=(0, 4), calcifications=(0, 2),
    n_ellipsoids=(60, 120), ellipsoid_chi=9.2,   # count range (uniform); ~9.2 ppm air-like values
    mask_variation=True,
    antialias=(1, 2),              # passes of a [1,2,1]/4 blur of external chi (std 0.71 / 1.0 voxel); None = off
    smooth_field=(0.5, 0.3),       # (probability, max amplitude ppm) of a harmonic 2nd-order field
    noise=0.0,                     # field noise std in ppm, or "random" (SNR-based), 0 = none
    snr=(20.0, 200.0),             # local-field RMS / noise std for noise="random"
    noise_corr=(0.0, 1.5, 4.0),    # (probability, min, max correlation length in voxels): part of the
                                   # noise variance (30-100 %) is spatially smooth, as real fields'
                                   # departures from the dipole model are (module docstring)
    chi_blur=(0.0, 0.3, 1.2),      # (probability, min, max Gaussian std in voxels) of a partial-volume blur of
                                   # the brain's chi (susceptibility.partial_volume): real maps have no voxel-sharp
                                   # label edges; a VN trained without it lost to TKD on blurred chi (session 15)
    wm_anisotropy=(0.0, 0.01, 0.03),   # (probability, min, max |chi_par - chi_perp| ppm) in white matter,
                                   # fibre directions a smooth random unit-vector field (module docstring)
    pad=None,                      # zero padding per side for the FFTs (default size // 6)
    bg_supersample=1,              # external sources on an n-times finer grid, their field averaged over each
                                   # voxel (:func:`fine_external_chi`); 1 = output grid (module docstring)
    bg_supersample_tilted_only=False,   # the fine grid only for a tilted B0 (along z the output grid's blurred
                                   # sources are as harmonic: V-SHARP 8.6 vs 10.4 % median, 64^3); with 30 %
                                   # tilted items ~3x cheaper than the fine grid for all
    device=None,
)


def rng_for(seed: int, stream: int = 0) -> np.random.Generator:
    """The numpy generator used for ``seed`` (independent streams per ``stream``)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(stream), 0x4E5851]))


def half_kernel(pshape: Sequence[int], voxel_size: Sequence[float], b0_dir: Sequence[float], device=None) -> torch.Tensor:
    """The core dipole kernel (:func:`nextqsm.dipole.dipole_kernel`, D(0) = 0) on the rfft half grid
    (last axis 0..n/2), built by broadcasting in float32 (same formula; tested against the core).

    On Nyquist planes of even axes the full-FFT forward model (``ifftn(fftn(x) * D).real``) in
    effect averages D(k) with D(k with the Nyquist components negated); for a tilted B0 these
    differ. We build that average, ``1/3 - (kR^2 + kN^2)/|k|^2`` (kR, kN: the non-Nyquist and
    Nyquist parts of k.b), so that the real-FFT model equals the core's full-FFT model exactly.
    """
    from nextqsm.dipole import _unit

    b = _unit(b0_dir)
    kr = 0.0
    kn = 0.0
    k2 = 0.0
    for ax, (n, d) in enumerate(zip(pshape, voxel_size)):
        n = int(n)
        f = torch.fft.rfftfreq(n, d=float(d), device=device) if ax == 2 else torch.fft.fftfreq(n, d=float(d), device=device)
        if ax == 2 and n % 2 == 0:
            f = f.clone()
            f[-1] = -f[-1]          # the full FFT grid's Nyquist frequency is -n/2 (fftfreq)
        f = f.to(torch.float32).view([-1 if a == ax else 1 for a in range(3)])
        nyq = torch.zeros_like(f)
        if n % 2 == 0:
            sl = [slice(None)] * 3
            sl[ax] = slice(n // 2, n // 2 + 1) if ax != 2 else slice(-1, None)
            nyq[tuple(sl)] = 1.0
        k2 = k2 + f * f
        kr = kr + f * (1 - nyq) * float(b[ax])
        kn = kn + f * nyq * float(b[ax])
    k2 = k2.clone()
    k2[0, 0, 0] = 1.0
    d = 1.0 / 3.0 - (kr * kr + kn * kn) / k2
    d[0, 0, 0] = 0.0
    return d


def forward_fields(chis: torch.Tensor, voxel_size: Sequence[float], b0_dir: Sequence[float],
                   pad: int | Sequence[int] | None) -> torch.Tensor:
    """D * chi for a batch (B, i, j, k) with zero padding, via real FFTs and the core's dipole kernel
    (:func:`nextqsm.dipole.dipole_kernel_torch`, D(0) = 0). Equal to
    :func:`nextqsm.dipole.forward_field_torch` up to float rounding, half the cost."""
    shape = chis.shape[-3:]
    pshape, widths, crop = _fft_grid(shape, pad)
    k = half_kernel(pshape, voxel_size, b0_dir, device=chis.device)
    f = torch.fft.irfftn(torch.fft.rfftn(F.pad(chis, widths), dim=(-3, -2, -1)) * k, s=pshape, dim=(-3, -2, -1))
    return f[(...,) + crop]


def _fft_grid(shape: Sequence[int], pad) -> tuple[tuple[int, ...], list[int], tuple[slice, ...]]:
    """Zero-padded FFT grid of the forward models: even padded shape (clean rfft Nyquist plane),
    ``F.pad`` widths (last axis first) and the slices that crop it back to ``shape``."""
    pshape = tuple(p + (p % 2) for p in padded_shape(shape, pad))
    before = [(t - n) // 2 for n, t in zip(shape, pshape)]
    widths: list[int] = []
    for b, n, t in reversed(list(zip(before, shape, pshape))):
        widths += [b, t - n - b]
    return pshape, widths, tuple(slice(b, b + n) for b, n in zip(before, shape))


def anisotropy_field(dchi: torch.Tensor, fibres: torch.Tensor, voxel_size: Sequence[float],
                     b0_dir: Sequence[float], pad: int | Sequence[int] | None) -> torch.Tensor:
    """Field (ppm, (i, j, k)) of the traceless anisotropic susceptibility X = dchi (n n^T - I/3).

    ``dchi`` (i, j, k) ppm: chi_par - chi_perp per voxel; ``fibres`` (3, i, j, k): unit fibre
    directions in voxel axes. STI forward model (Liu, MRM 2010) on the grid of :func:`forward_fields`:
    f(k) = sum_ij X_ij(k) (b_i b_j / 3 - (b.k) k_i b_j / |k|^2), f(0) = 0. For X = chi I this is the
    dipole model D chi; for the traceless X here the mean susceptibility (the QSM target) is unchanged.
    Six FFTs (X is symmetric).
    """
    from nextqsm.dipole import _unit, kspace_grid

    b = [float(v) for v in _unit(b0_dir)]
    pshape, widths, crop = _fft_grid(dchi.shape, pad)
    ks = [torch.from_numpy(k.astype(np.float32)).to(dchi.device) for k in kspace_grid(pshape, voxel_size)]
    k2 = ks[0] ** 2 + ks[1] ** 2 + ks[2] ** 2
    k2[0, 0, 0] = 1.0
    bk = (b[0] * ks[0] + b[1] * ks[1] + b[2] * ks[2]) / k2
    total = torch.zeros(pshape, dtype=torch.complex64, device=dchi.device)
    for i in range(3):
        for j in range(i, 3):
            x = dchi * (fibres[i] * fibres[j] - (1.0 / 3.0 if i == j else 0.0))
            w = b[i] * b[j] / 3.0 - bk * ks[i] * b[j]
            if i != j:   # X_ij = X_ji: both terms of the sum
                w = w + b[j] * b[i] / 3.0 - bk * ks[j] * b[i]
            total += torch.fft.fftn(F.pad(x, widths)) * w
    total[0, 0, 0] = 0.0
    return torch.fft.ifftn(total).real[crop]


def block_mean_field(ext_fine: torch.Tensor, voxel_fine: Sequence[float], b0_dir: Sequence[float], pad_fine,
                     ss: int) -> torch.Tensor:
    """Dipole field (ppm) of the fine-grid chi ``ext_fine`` (ppm, ``ss`` x n per axis, ``voxel_fine`` mm),
    averaged over each ``ss``^3 block: shape n per axis."""
    f = forward_fields(ext_fine[None], voxel_fine, b0_dir, pad_fine)[0]
    n = [int(s) // ss for s in ext_fine.shape]
    return f.reshape(n[0], ss, n[1], ss, n[2], ss).mean(dim=(1, 3, 5))


def fine_external_chi(vol, values: torch.Tensor, centre_mm, shape: Sequence[int], voxel_size: np.ndarray,
                      A: np.ndarray, t: np.ndarray, disp: torch.Tensor | None, mask: torch.Tensor,
                      ellipsoids: torch.Tensor | None, ss: int) -> torch.Tensor:
    """External chi (ppm) on the ``ss``-times finer grid (ss x ``shape``): ``values`` of the full-resolution label
    map ``vol`` through the same deformation as the output grid (affine ``A, t`` about ``centre_mm``, displacement
    ``disp`` (3, *shape) mm, trilinearly upsampled), zero inside the (upsampled) ``mask``; ``ellipsoids`` (output
    grid, NaN = none; nearest-upsampled) painted over. Per-label values only: texture, veins and lesions painted on
    the output grid are not drawn outside the mask here. Labels are sampled slab by slab to bound the memory."""
    dev = mask.device
    n = [int(s) * ss for s in shape]
    fv = np.asarray(voxel_size, float) / ss
    axes = dfm.output_axes_mm(n, fv, device=dev)
    keep = ~mask.repeat_interleave(ss, 1).repeat_interleave(ss, 2)       # (n0 coarse, n1, n2)
    src = torch.from_numpy(vol.idx).to(dev)
    At = torch.as_tensor(np.asarray(A, np.float32), device=dev)
    off = torch.as_tensor((np.asarray(centre_mm, np.float64) + np.asarray(t, np.float64)).astype(np.float32),
                          device=dev).view(3, 1, 1, 1)
    if disp is not None:   # A . disp, trilinearly upsampled (separable): the last two axes once, the first per slab
        m = [_linear_upsampling(int(s), ss, dev) for s in shape]
        dA = torch.einsum("ab,bijk->aijk", At, disp)
        dkj = torch.einsum("xijk,bj,ck->xibc", dA, m[1], m[2]).reshape(3, int(shape[0]), -1)
    # A . (grid point) is separable: a sum of three broadcast 1-D terms per output axis
    lin = [[(At[r, c] * axes[c]).view([-1 if d == c else 1 for d in range(3)]) for c in range(3)] for r in range(3)]
    out = torch.empty(n, dtype=torch.float32, device=dev)
    step = 8 * ss
    for a in range(0, n[0], step):
        b = min(a + step, n[0])
        x = torch.stack([lin[r][0][a:b] + lin[r][1] + lin[r][2] + off[r] for r in range(3)])
        if disp is not None:
            x = x + torch.matmul(m[0][a:b], dkj).view(3, b - a, n[1], n[2])
        chi = values[dfm.sample_labels(src, vol.voxel_size, x).long()]
        if ellipsoids is not None:
            e = ellipsoids[a // ss:(b + ss - 1) // ss].repeat_interleave(ss, 0).repeat_interleave(ss, 1) \
                .repeat_interleave(ss, 2)
            chi = torch.where(torch.isnan(e), chi, e)
        out[a:b] = chi * keep[torch.arange(a, b, device=dev) // ss]
    return out


def _linear_upsampling(n: int, ss: int, device=None) -> torch.Tensor:
    """(ss*n, n) weights of linear interpolation from n voxel centres to the ss*n centres of the finer grid over
    the same extent (``align_corners=False`` geometry, edge values held)."""
    c = ((torch.arange(n * ss, dtype=torch.float64) + 0.5) / ss - 0.5).clamp(0, n - 1)
    lo = c.floor().long().clamp(max=n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    w = (c - lo).float()
    m = torch.zeros(n * ss, n)
    r = torch.arange(n * ss)
    m[r, lo] += 1 - w
    m[r, hi] += w
    return m.to(device)


def _scaled_pad(pad, ss: int):
    return pad * ss if np.isscalar(pad) else [int(p) * ss for p in pad]


def _choose_grid(rng, vol, size: int, opts) -> tuple[np.ndarray, np.ndarray]:
    """Output voxel size (3,) mm and FOV (3,) mm."""
    if opts["voxel_size"] is not None:
        vs = np.broadcast_to(np.asarray(opts["voxel_size"], float), (3,)).copy()
    else:
        fov = float(vol.brain_extent_mm().max()) * rng.uniform(*opts["fov_factor"])
        vs = np.full(3, fov / size)
        p, lo, hi = opts["anisotropy"]
        if rng.random() < p:
            vs = vs * rng.uniform(lo, hi, 3)
    return vs, vs * size


def _random_b0(rng, opts) -> np.ndarray:
    p, max_deg = opts["b0_tilt_deg"]
    if rng.random() >= p:
        return np.array([0.0, 0.0, 1.0])
    theta = np.deg2rad(rng.uniform(0, max_deg))
    phi = rng.uniform(0, 2 * np.pi)
    return np.array([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)])


def _brain_mask(idx: torch.Tensor, mask_lut: torch.Tensor, brain_lut: torch.Tensor, csf_lut: torch.Tensor,
                rng, variation: bool):
    """(mask, anatomical mask, brain region). The anatomical mask is brain + ventricles + sulcal CSF
    (a precomputed label); the returned mask varies it at random: a 1-voxel erosion (30 %) or a
    1-voxel dilation into CSF (25 %), like the spread of real brain masks."""
    il = idx.long()
    brain = brain_lut[il]
    anat = mask_lut[il]
    mask = anat
    if variation:
        u = rng.random()
        if u < 0.3:
            mask = erode(anat, 1)
        elif u < 0.55:
            mask = anat | (dilate(anat, 1) & csf_lut[il])
    return mask, anat, brain


def make_pair(seed: int, size: int = 64, source=None, return_labels: bool = False, **opts) -> dict:
    """Generate one hybrid training pair (deterministic per ``seed``).

    Parameters: ``size`` (grid edge, voxels), ``source`` (see :func:`label_sources.expand_sources`;
    default SynthSeg training maps, else procedural heads), options in :data:`DEFAULTS`.
    Returns a dict of numpy arrays, shape (size,)*3 float32 unless noted:
    ``chi`` (brain chi, ppm, 0 outside mask), ``local_field`` and ``total_field`` (ppm, masked),
    ``mask`` (uint8), ``voxel_size`` and ``b0_dir`` (float32 (3,)), ``source`` (name);
    when ``noise`` is on also ``local_field_clean``/``total_field_clean``; with ``return_labels``
    also ``labels`` (deformed FreeSurfer codes, int32), ``labels_src`` (the source resampled on the
    same grid without deformation, for QA) and ``chi_external`` (ppm, outside the mask, as used for
    the total field). ``pad`` is the zero padding used by the FFTs.
    """
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}")
    o = {**DEFAULTS, **opts}
    dev = torch.device(o["device"]) if o["device"] is not None else torch.device("cpu")
    rng = rng_for(seed)
    sources = source if isinstance(source, list) and source and isinstance(source[0], LabelSource) \
        else expand_sources(source)
    src: LabelSource = sources[int(rng.integers(len(sources)))]
    size = int(size)
    vol1 = src.load(1)
    vs, fov = _choose_grid(rng, vol1, size, o)
    stride = max(1, int(np.floor(vs.min() / vol1.voxel_size[0] / 1.5)))
    vol = src.load(stride) if stride > 1 else vol1
    shape = (size,) * 3

    # --- deformation of the label map onto the output grid
    A, t = dfm.random_affine(rng, o["rotation_deg"], o["scaling"], o["shear"], o["translation_mm"])
    disp = dfm.random_elastic(rng, shape, fov, max_std_mm=o["elastic_mm"], device=dev) if o["elastic_mm"] else None
    src_idx = torch.from_numpy(vol.idx).to(dev)
    centre = vol1.brain_centre_mm() - (stride // 2) * np.asarray(vol1.voxel_size)
    idx = dfm.deform_labels(src_idx, vol.voxel_size, centre, shape, vs, A, t, disp)

    # --- chi per label + realism inside the brain
    codes = vol.codes
    values = torch.from_numpy(sample_label_values(codes, rng, o["global_scale"], o["p_realistic"])).to(dev)
    brain_lut = torch.from_numpy(np.array([is_brain_label(c) for c in codes])).to(dev)
    tis = tissue_lut(codes)
    csf_lut = torch.from_numpy((tis == int(Tissue.CSF)) | np.isin(codes, list(VENTRICLE_LABELS))).to(dev)
    chi = values[idx.long()]
    mask_lut = torch.from_numpy(np.array([is_mask_label(c) for c in codes])).to(dev)
    mask, anat, brain = _brain_mask(idx, mask_lut, brain_lut, csf_lut, rng, o["mask_variation"])
    add_texture(chi, brain, rng, o["texture_ppm"])
    pts = region_points(brain)
    if o["lesions"]:
        add_lesions(chi, brain, rng, vs, o["lesions"], points=pts)
    if o["veins"]:
        add_veins(chi, brain, rng, vs, o["veins"], points=pts)
    if o["microbleeds"]:
        add_spots(chi, brain, rng, vs, o["microbleeds"], value=(0.5, 1.5), radius_mm=(0.8, 2.0), points=pts)
    if o["calcifications"]:
        add_spots(chi, brain, rng, vs, o["calcifications"], value=(-1.2, -0.4), radius_mm=(1.0, 3.0), points=pts)
    p_b, lo_b, hi_b = o["chi_blur"]
    if p_b and rng.random() < p_b:   # no draw when off: older configs keep their data
        partial_volume(chi, brain, float(rng.uniform(lo_b, hi_b)))

    # --- external sources: head classes outside the mask + random ellipsoids
    keep_out = dilate(mask | anat, max(1, int(round(2.0 / float(vs.min())))))   # ellipsoids: never in the brain
    ext = torch.full(shape, float("nan"), device=dev)
    n_ell = int(rng.integers(o["n_ellipsoids"][0], o["n_ellipsoids"][1] + 1)) if o["n_ellipsoids"] else 0
    ss = o["bg_supersample"]
    if isinstance(ss, bool) or not isinstance(ss, (int, np.integer)) or ss < 1:
        raise ValueError(f"bg_supersample must be an integer >= 1, got {ss!r}")
    ss = int(ss)
    random_ellipsoids(ext, keep_out, vs, rng, n=n_ell, brain_volume_vox=float(brain.sum()),
                      chi_mean=o["ellipsoid_chi"])
    chi_all = torch.where(torch.isnan(ext), chi, ext)
    chi_brain = chi_all * mask
    chi_ext = chi_all - chi_brain
    passes = int(rng.integers(o["antialias"][0], o["antialias"][1] + 1)) if o["antialias"] else 0
    b0 = _random_b0(rng, o)
    if ss > 1 and o["bg_supersample_tilted_only"] and float(abs(b0[2])) > 1.0 - 1e-6:
        ss = 1   # B0 along z: the output grid's (blurred) sources
    if passes and ss == 1:
        # partial-volume blur of the (sharp, strong) external sources: without it the discrete
        # dipole field of 9 ppm step edges rings (Gibbs) into the brain and the background is
        # no longer harmonic there. Re-masked, so external chi never enters the brain.
        chi_ext = binomial_blur(chi_ext, passes) * (~mask)
        chi_all = chi_brain + chi_ext

    # --- fields
    pad = o["pad"] if o["pad"] is not None else max(4, size // 6)
    mf = mask.float()
    if ss == 1:
        f = forward_fields(torch.stack([chi_brain, chi_all]), vs, b0, pad)
        local = f[0] * mf
        total = f[1] * mf
    else:
        # the ellipsoids (>= 2 mm from the brain) keep their output-grid shape: drawing them on the fine grid
        # changed the tilted pairs' V-SHARP residual by <= 0.1 points (benchmarks/results_generator_oblique.md)
        ext_f = fine_external_chi(vol1, values, vol1.brain_centre_mm(), shape, vs, A, t, disp, mask, ext, ss)
        lf = forward_fields(chi_brain[None], vs, b0, pad)[0]
        local = lf * mf
        total = (lf + block_mean_field(ext_f, vs / ss, b0, _scaled_pad(pad, ss), ss)) * mf
        del ext_f
    p_s, amp_s = o["smooth_field"]
    if p_s and rng.random() < p_s:
        total = total + harmonic_polynomial(shape, rng, rng.uniform(0, amp_s), dev) * mf
    p_a, lo_a, hi_a = o["wm_anisotropy"]
    if p_a and rng.random() < p_a:   # no draw when off: older configs keep their data
        wm_lut = torch.from_numpy(np.isin(tis, [int(Tissue.WM), int(Tissue.CEREBELLUM_WM), int(Tissue.BRAINSTEM)])).to(dev)
        low = int(rng.integers(3, 8))
        n = torch.stack([smooth_field(rng, shape, low, dev) for _ in range(3)])
        n = n / n.norm(dim=0, keepdim=True).clamp_min(1e-6)
        dchi = -rng.uniform(lo_a, hi_a) * (wm_lut[idx.long()] & mask).float()
        fa = anisotropy_field(dchi, n, vs, b0, pad) * mf
        local, total = local + fa, total + fa
    out = {"chi": chi_brain, "local_field": local, "total_field": total}
    noise = o["noise"]
    sigma = 0.0
    if noise == "random":
        rms = float(torch.sqrt((local[mask] ** 2).mean())) if mask.any() else 0.0
        sigma = rms / rng.uniform(*o["snr"])
    elif noise:
        sigma = float(noise)
    if sigma > 0:
        g = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        p_c, lo_c, hi_c = o["noise_corr"]
        smooth, w = None, 0.0
        if p_c and rng.random() < p_c:   # no draw when off: older configs keep their data
            w = rng.uniform(0.3, 1.0)
            smooth = smooth_field(rng, shape, max(2, int(round(max(shape) / rng.uniform(lo_c, hi_c)))), dev)
        for k in ("local_field", "total_field"):
            out[k + "_clean"] = out[k]
            n = sigma * torch.randn(shape, generator=g).to(dev)
            if smooth is not None:
                n = math.sqrt(1.0 - w) * n + math.sqrt(w) * sigma * smooth
            out[k] = (out[k] + n) * mf
    res = {k: v.cpu().numpy().astype(np.float32) for k, v in out.items()}
    res["mask"] = mask.cpu().numpy().astype(np.uint8)
    res["voxel_size"] = vs.astype(np.float32)
    res["b0_dir"] = b0.astype(np.float32)
    res["source"] = vol.name
    res["noise_std"] = np.float32(sigma)
    res["pad"] = int(pad) if np.isscalar(pad) else pad
    if return_labels:
        res["labels"] = vol.codes[idx.cpu().numpy()].astype(np.int32)
        res["chi_external"] = chi_ext.cpu().numpy().astype(np.float32)
        und = dfm.deform_labels(src_idx, vol.voxel_size, centre, shape, vs)   # undeformed, same grid
        res["labels_src"] = vol.codes[und.cpu().numpy()].astype(np.int32)
    return res
