"""Realistic, deterministic test heads for benchmarks (classical methods and NeXtQSM).

:func:`realistic_head` builds a head from one SynthSeg whole-head map (default: the held-out maps
13-16, never used for training), a user label map, or the procedural head, with **fixed** (not
randomised) physically realistic ppm per tissue class (:data:`labels.CLASS_PPM` means: WM -0.04,
cortex 0.03, CSF 0, caudate/putamen 0.075, pallidum 0.175, thalamus 0.04, ventral DC 0.09, veins
0.38, dural sinuses 0.3, bone -2, marrow -1, air +9.2 relative to tissue), plus a few seeded veins.
With ``bg_supersample=1`` external chi gets a [1, 2, 1]/4 partial-volume blur (re-masked) before the forward
model, as in :mod:`simulate`. The total field is computed on a grid covering the **whole head** (so sinuses, skull and the
air around the head all contribute a realistic background), then cropped to ``size``^3 around the
brain centre. No deformation is applied.

The background field is computed from the external sources sampled on a ``bg_supersample``-times finer grid
and averaged over each voxel (what a voxel measures). On the native grid the FFT forward model of sources
that touch the brain mask is not harmonic inside it when B0 is oblique: V-SHARP left 32-36 % (of the local
field) of the pure background field of heads 13 and 16 at a 20 degree tilt against 8 % along z; with the
sources 2x / 4x finer it leaves 16 / 14 % tilted and 9-11 % along z (session 11). At 1 mm (2x by default) a
25-degree tilt still leaves 17 % (8 % along z), and 3x / 4x grids leave 19 / 17 %: what remains is the head's own
near-mask sources, not the grid (benchmarks/results_diag_tilt.md).
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import torch

from .deform import output_axes_mm, output_grid_mm, sample_labels
from .external import binomial_blur, erode
from .label_sources import HELD_OUT, TRAIN_MAPS, LabelSource, expand_sources  # noqa: F401 (re-exported)
from .labels import is_brain_label, is_mask_label, tissue_lut
from .simulate import block_mean_field, forward_fields
from .susceptibility import add_veins, sample_label_values

__all__ = ["realistic_head", "HELD_OUT", "TRAIN_MAPS", "BG_FINE_MM"]

#: Largest fine-grid voxel (mm) of the background field's supersampling (V-SHARP residual of the pure
#: background field of heads 13 / 16 at 2.8 / 3.3 mm, B0 tilted 20 degrees: 31.7 / 35.5 % on the native grid,
#: 16.3 / 14.8 % at 2x, 15.3 % at 3x and 13.8 / 13.0 % at 4x finer; along z 8.0-13.2 % throughout).
BG_FINE_MM = 0.75


def _source(index) -> LabelSource:
    if isinstance(index, LabelSource):
        return index
    if isinstance(index, (int, np.integer)):
        return LabelSource("synthseg", str(int(index)))
    return expand_sources(str(index))[0]


def _fine_background(vol, values: torch.Tensor, centre, big, vsa: np.ndarray, mask: torch.Tensor, b0: tuple,
                     ss: int) -> torch.Tensor:
    """Background field (ppm, ``big`` grid) of the head's chi outside ``mask``, with the labels sampled on an
    ``ss``-times finer grid, the field computed there and averaged over each ``big`` voxel.

    Labels are sampled slab by slab (the fine coordinate grid of a 1 mm head would take ~2 GB)."""
    n = [int(b) * ss for b in big]
    fv = vsa / ss
    axes = [x + float(c) for x, c in zip(output_axes_mm(n, fv), centre)]
    keep = ~mask.repeat_interleave(ss, 1).repeat_interleave(ss, 2)   # (big0, n1, n2): the fine voxels outside
    ext = torch.empty(n, dtype=torch.float32)
    step = 8 * ss
    for a in range(0, n[0], step):
        pts = torch.stack(torch.meshgrid(axes[0][a:a + step], axes[1], axes[2], indexing="ij"))
        chi = values[sample_labels(torch.from_numpy(vol.idx), vol.voxel_size, pts).long()]
        ext[a:a + step] = chi * keep[torch.arange(a, min(a + step, n[0])) // ss]
    return block_mean_field(ext, fv, b0, 16 * ss, ss)


@functools.lru_cache(maxsize=8)
def _head(src: LabelSource, size: int, seed: int, b0: tuple, vs: tuple | None, veins: bool, ss: int | None) -> dict:
    vol = src.load(1)
    centre = vol.brain_centre_mm()
    if vs is None:   # fit the brain into the grid with a 10 % margin
        vs = tuple([float(vol.brain_extent_mm().max() * 1.1 / size)] * 3)
    vsa = np.asarray(vs, float)
    if ss is None:
        ss = int(np.ceil(float(vsa.max()) / BG_FINE_MM - 1e-6))
    # a grid covering the whole head (+ 8 mm of air), centred on the brain centre
    extent_mm = np.asarray(vol.idx.shape) * np.asarray(vol.voxel_size)
    half = np.maximum(centre, extent_mm - centre) + 8.0
    big = np.maximum(int(size), np.ceil(2 * half / vsa).astype(int))
    big = big + (big - size) % 2            # same parity, so the crop is centred exactly
    idx = sample_labels(torch.from_numpy(vol.idx), vol.voxel_size,
                        output_grid_mm(big, vsa) + torch.as_tensor(centre, dtype=torch.float32).view(3, 1, 1, 1))
    codes = vol.codes
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x4EAD]))
    values = torch.from_numpy(sample_label_values(codes, rng, realistic=False))
    chi = values[idx.long()]
    brain = torch.from_numpy(np.array([is_brain_label(c) for c in codes]))[idx.long()]
    mask = torch.from_numpy(np.array([is_mask_label(c) for c in codes]))[idx.long()]
    if veins:
        add_veins(chi, erode(brain, 1), rng, vsa, n_range=(10, 10), value=(0.38, 0.38), radius_mm=(0.8, 1.4))
    off = [(b - size) // 2 for b in big]
    sl = tuple(slice(o, o + size) for o in off)
    inner = torch.zeros_like(mask)   # the mask lives inside the crop (1-voxel border kept free)
    inner[tuple(slice(o + 1, o + size - 1) for o in off)] = True
    mask &= inner
    chi_brain = chi * mask
    # local field on the crop (core default padding); background from everything else on the
    # whole-head grid (16 voxels of zero padding: the grid already has 8 mm of air around the head)
    local = forward_fields(chi_brain[sl][None], vsa, b0, pad=None)[0]
    if ss <= 1:
        ext = binomial_blur(chi - chi_brain, 1) * (~mask)   # partial volume (no Gibbs ringing into the brain)
        bg = forward_fields(ext[None], vsa, b0, pad=16)[0][sl]
    else:
        bg = _fine_background(vol, values, centre, big, vsa, mask, b0, ss)[sl]
    m = mask[sl]
    mf = m.float()
    f = (local * mf, (local + bg) * mf)
    tis = torch.from_numpy(tissue_lut(codes))[idx.long()][sl]
    return {
        "chi": chi_brain[sl].numpy().astype(np.float32),
        "local_field": f[0].numpy().astype(np.float32),
        "total_field": f[1].numpy().astype(np.float32),
        "mask": m.numpy().astype(np.uint8),
        "seg": (tis * m).numpy().astype(np.uint8),
        "labels": codes[idx[sl].numpy()].astype(np.int32),
        "chi_all": chi[sl].numpy().astype(np.float32),
        "voxel_size": vsa.astype(np.float32),
        "b0_dir": (np.asarray(b0, float) / np.linalg.norm(b0)).astype(np.float32),
        "source": vol.name,
    }


def tilted_b0(deg: float) -> tuple[float, float, float]:
    """B0 unit vector tilted ``deg`` degrees from the k axis towards j (a head pitched in the coil), voxel axes."""
    t = math.radians(float(deg))
    return (0.0, math.sin(t), math.cos(t))


def realistic_head(index: int | str = HELD_OUT[0], size: int = 160, seed: int = 0,
                   b0_dir: Sequence[float] = (0.0, 0.0, 1.0), voxel_size: Sequence[float] | None = (1.0, 1.0, 1.0),
                   noise: float = 0.0, veins: bool = True, bg_supersample: int | None = None) -> dict:
    """A deterministic, physically realistic test head (no randomised prior).

    ``index``: SynthSeg map number (1-16; 13-16 are held out from training), ``"procedural"``, or a
    path to a label map. ``size``: grid edge in voxels; ``voxel_size`` mm (``None`` fits the brain
    into the grid); ``b0_dir`` in voxel (RAS) axes; ``noise``: Gaussian field noise std in ppm
    (seeded by ``seed``) added to both fields (the clean ones are kept as ``*_clean``); ``bg_supersample``:
    fine-grid factor of the background field (default: the smallest making the fine voxels <= 0.75 mm,
    :data:`BG_FINE_MM`; 1: the native grid with a [1, 2, 1]/4 partial-volume blur of the sources, the heads
    before session 11).

    Returns numpy arrays (size,)*3: ``chi`` (ppm, 0 outside mask), ``local_field``, ``total_field``
    (ppm, masked), ``mask`` (uint8), ``seg`` (:class:`labels.Tissue` class in the mask, 0 outside),
    ``labels`` (FreeSurfer codes), ``chi_all`` (brain + extra-cerebral chi), ``voxel_size``, ``b0_dir``
    (float32 (3,)), ``source``.
    """
    vs = None if voxel_size is None else tuple(float(v) for v in np.broadcast_to(np.asarray(voxel_size, float), (3,)))
    b0 = tuple(float(b) for b in b0_dir)
    if bg_supersample is not None and int(bg_supersample) < 1:
        raise ValueError(f"bg_supersample must be >= 1, got {bg_supersample}")
    base = _head(_source(index), int(size), int(seed), b0, vs, bool(veins),
                 None if bg_supersample is None else int(bg_supersample))
    out = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in base.items()}
    if noise and noise > 0:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x0015E]))
        m = out["mask"].astype(np.float32)
        for k in ("local_field", "total_field"):
            out[k + "_clean"] = out[k]
            out[k] = ((out[k] + rng.normal(0, noise, out[k].shape)) * m).astype(np.float32)
    return out
