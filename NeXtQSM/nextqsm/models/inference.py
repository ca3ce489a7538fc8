"""Inference with the shipped networks: ``run_nextqsm`` and ``run_unet_baseline`` (pipeline methods).

Both take a :class:`nextqsm.pipeline.QSMInput` (field in ppm) and return a
:class:`nextqsm.pipeline.QSMResult` (chi and local field in ppm).

Steps: crop to the mask's bounding box plus ``margin`` voxels; (for ``kind='total'``)
background removal with the U-Net; dipole inversion with the VN (NeXtQSM) or a plain U-Net
(baseline); paste back into the full grid. The networks pad internally to their multiple
(``2 ** depth``). The VN's data term zero-pads for the FFT (``pad`` voxels per side).

Geometry: the VN data term uses the TRUE dipole kernel for ``inp.voxel_size`` and
``inp.b0_dir`` (any oblique direction, anisotropic voxels). The U-Nets (background removal,
the VN regulariser and the baseline inversion) are convolutional and see no geometry: they
learnt whatever the training data showed. The shipped weights were trained on
``nextqsm_training.simulate.make_pair`` volumes (see the manifest's ``training.data``): B0
along the k axis in 70 % of the samples and tilted by up to 25 degrees (random azimuth) in
30 % (the generator's default ``b0_tilt_deg=(0.3, 25)``), then randomly flipped and i/j
transposed (B0 transformed accordingly); isotropic voxels of 1, 1.5, 2 and 3 mm. So the
background U-Net assumes B0 near the k axis (within ~25 degrees) and voxels of 1-3 mm; the
VN's data consistency uses the exact tilted kernel. The baseline has no data term: its
inversion U-Net assumes the same near-k B0 throughout.

Device: ``device='auto'`` (or ``inp.device``) uses CUDA when available; a CUDA
out-of-memory error falls back to the CPU (reported in ``result.device`` and
``result.params['fallback']``). Large volumes are processed with the U-Net calls tiled
(``tile`` voxels per side, overlap ``overlap``) while the FFT data term stays global.
On CUDA the classical background removal runs on the GPU too: V-SHARP with torch FFTs (``bfr='vsharp'``), LBV
with a torch conjugate-gradient solve (``bfr='lbv'``); numpy/scipy on the CPU if that fails
(``result.params['vsharp_fallback']`` / ``['lbv_fallback']``; the device used is ``params['<bfr>_device']``).
Test-time flips (``tta`` = 2, 4 or 8): the VN runs on flipped copies of its input (B0 flipped with
them) and the flipped-back results are averaged (N times the VN's time). ``tta=None`` / ``'auto'``: the
manifest's ``defaults.tta`` for the device the VN runs on (:func:`default_tta`), else 1 (off).
Data consistency (``dc_mu``): the VN's optional final closed-form step towards the measured field
(:func:`nextqsm.models.vn.consistency_step`, one FFT pair). ``dc_mu=None``: the shipped model's weight for
a local field given by the user (``kind='local'``), but 0 (off) after the pipeline's own background
removal (``kind='total'``): the step turns what background removal leaves behind near air-tissue
interfaces into chi (demo phantom, V-SHARP local field 80 % NRMSE, session-6 VN: 53.1 % without the step, 58.1 %
with it), while it helps on well-processed local fields (2016 challenge, session-6 VN: 69.8 -> 64.6 %). Pass a number to
force it either way.
TV refinement (``refine``, :mod:`nextqsm.models.refine`): a local field given by the user is, by default,
refined after the VN by TV-regularised inversion with the VN's chi as prior, its TV weight growing with the
field's non-dipolar (magic-cone) energy; it replaces the consistency step there (2016 challenge, shipped VN:
73.1 -> 56.3 % vs COSMOS). Off after the pipeline's own background removal (same reason as above); ``refine=True`` forces it.
Everything runs under ``torch.inference_mode``. On the CPU the networks' convolution weights are channels-last
(``torch.channels_last_3d``): with torch 2.13 a whole-head U-Net forward is ~1.8x faster (160x192x176, 2 threads:
3.9 -> 2.2 s; equal at 64^3; an older measurement, 64^3 with an earlier torch, had found it slower).
Precision (``precision``): on a CPU with native bfloat16 (AVX512-BF16 or AMX) the U-Nets' convolutions run under
bfloat16 autocast by default ('auto'); the FFT data term, the consistency step, the refinement and all outputs stay
float32. 164x205x205 on 2 cores: 18.1 -> 11.3 s (VN 13.8 -> 7.2 s), peak RSS 2.0 -> 1.5 GB; chi within 0.1-0.3 %
(relative L2) of float32, NRMSE within 0.004 points. ``precision='float32'`` turns it off. Elsewhere (CPUs without
native bfloat16, and CUDA, where a whole head takes well under a second on an H200: ``benchmarks/results_gpu.md``)
inference is float32, with cuDNN's TF32 turned off.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np

from ..errors import QSMInputError
from ..methods.pipelines import _check_unused
from ..pipeline import QSMInput, QSMResult, report
from ..validation import check_finite

#: channels-last convolution weights for CPU inference (see the module notes)
CPU_CHANNELS_LAST = True
#: ``precision`` choices of the networks' convolutions (the FFT data term, consistency step and refinement stay float32)
PRECISIONS = ("auto", "float32", "bfloat16")
#: what ``precision='auto'`` uses on a CPU with native bfloat16 (AVX512-BF16 / AMX); elsewhere 'auto' is float32.
#: 164x205x205 on 2 such cores: 18.1 -> 11.3 s, chi within 0.1-0.3 % of float32 (benchmarks/results_nextqsm.md)
CPU_AUTO_PRECISION = "bfloat16"


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX512-BF16 or AMX): oneDNN's bfloat16 convolutions are then
    ~2-3x faster than float32 (``benchmarks/results_nextqsm.md``); elsewhere they are emulated or unsupported."""
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def compute_dtype(precision: str, dev: str):
    """The U-Nets' compute dtype for ``precision`` (one of :data:`PRECISIONS`) on device ``dev`` (None = float32);
    a clear error when asked for bfloat16 where it is not supported."""
    import torch

    cuda = dev.startswith("cuda")
    native = torch.cuda.is_bf16_supported() if cuda else cpu_has_native_bf16()
    if precision == "auto":
        precision = CPU_AUTO_PRECISION if (not cuda and native) else "float32"
    if precision == "float32":
        return None
    if not (native or (not cuda and torch.ops.mkldnn._is_mkldnn_bf16_supported())):
        raise QSMInputError("precision", f"bfloat16 is not supported on {dev}", "use precision=float32")
    return torch.bfloat16


def bbox(mask: np.ndarray, margin: int = 8) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by ``margin`` voxels, clipped to the volume."""
    idx = np.nonzero(mask)
    if len(idx[0]) == 0:
        raise QSMInputError("mask", "is empty (no voxel is 1)", "pass a mask that covers the brain")
    return tuple(slice(max(int(i.min()) - margin, 0), min(int(i.max()) + margin + 1, n))
                 for i, n in zip(idx, mask.shape))


BFR_CHOICES = ("unet", "vsharp", "lbv")
#: LBV's extra erosions of its interior before the VN (the outermost layers carry its largest errors; the VN
#: fills them, ``fill_rim``): on 1 mm training maps 1 / 2 peel 1 gave 43.3 / 40.3 % against 50.6 / 44.6 % for 0.
LBV_PEEL = 1


def default_bfr(defaults: dict, voxel_size) -> str:
    """The background removal the manifest's ``defaults`` choose for ``voxel_size`` (mm): ``bfr_fine``
    (``{"bfr": ..., "max_voxel_mm": ...}``) when the largest voxel edge is at most ``max_voxel_mm``, else
    ``bfr`` (default 'unet')."""
    fine = defaults.get("bfr_fine")
    if fine and max(float(v) for v in voxel_size) <= float(fine["max_voxel_mm"]) + 1e-6:
        return str(fine["bfr"])
    return str(defaults.get("bfr", "unet"))


def default_tta(defaults: dict, device: str) -> int:
    """Test-time flips the manifest's ``defaults`` choose for ``device``: ``tta`` is a count (every device) or
    ``{"cuda": n, "cpu": n}`` (by the device's type; a type not named gets 1); no ``tta``: 1 (off)."""
    t = defaults.get("tta", 1)
    if isinstance(t, dict):
        t = t.get(str(device).split(":")[0], 1)
    if t not in FLIP_COUNTS:
        raise QSMInputError("weights", f"manifest defaults.tta {defaults.get('tta')!r} is not one of {FLIP_COUNTS}",
                            "fix the weights folder's manifest (a count, or {'cuda': n, 'cpu': n})")
    return int(t)


def path_level(weights_dir, name: str, path: str) -> Optional[float]:
    """The VN's chi level calibrated for input ``path`` (``'lbv'``, ``'vsharp'``, ``'unet'`` background removal
    of a total field, or ``'local'``): the manifest entry's ``levels[path]`` (``nextqsm-train calibrate-level
    --heads --per-path``), else ``None`` (``arch.level`` applies). Units: the input field's robust scale."""
    from .weights import load_manifest

    lv = load_manifest(weights_dir).get("models", {}).get(name, {}).get("levels", {}).get(path)
    return None if lv is None else float(lv)


def pick_device(device: Optional[str]) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise QSMInputError("device", "CUDA was requested but no CUDA GPU is available", "use --device cpu or auto")
    return device


def _check(inp: QSMInput) -> None:
    if inp.field.ndim != 3:
        raise QSMInputError("field", f"expected a 3D volume, got shape {inp.field.shape}", "pass one 3D field map")
    check_finite(inp.field, "field", inp.mask)
    if not inp.mask.any():
        raise QSMInputError("mask", "is empty (no voxel is 1)", "pass a mask that covers the brain")


def _run(inp: QSMInput, names: tuple[Optional[str], str], progress, weights_dir, device, margin, pad, tile,
         overlap, max_voxels, method: str, bfr: Optional[str] = "unet",
         out_mask: Optional[np.ndarray] = None, tta: int | str | None = None, dc_mu: Optional[float] = None,
         refine: Optional[bool] = None, refine_l: Optional[float] = None, precision: str = "auto",
         level_path: Optional[str] = None) -> QSMResult:
    import torch

    from .unet import UNet3D
    from .vn import VariationalNetwork
    from .weights import load_model

    _check(inp)
    if precision not in PRECISIONS:   # fails before any work (support is checked on the device used)
        raise QSMInputError("precision", f"unknown precision {precision!r}", f"use one of {', '.join(PRECISIONS)}")
    t0 = time.perf_counter()
    if bfr is None:  # the manifest may say which background removal the shipped weights should use
        from .weights import load_manifest

        bfr = default_bfr(load_manifest(weights_dir).get("defaults", {}), inp.voxel_size)
    if bfr not in BFR_CHOICES:
        raise QSMInputError("bfr", f"unknown background removal {bfr!r}", f"use one of {', '.join(BFR_CHOICES)}")
    if tta not in (None, "auto", *FLIP_COUNTS) or isinstance(tta, bool):
        raise QSMInputError("tta", f"must be one of {FLIP_COUNTS} or 'auto', got {tta!r}",
                            "use 1 (off), 2, 4 or 8 flips, or 'auto' (the weights' default for the device)")
    if dc_mu is not None and (isinstance(dc_mu, bool) or not (isinstance(dc_mu, (int, float)) and np.isfinite(dc_mu) and dc_mu >= 0)):
        raise QSMInputError("dc_mu", f"must be a finite number >= 0, got {dc_mu!r}",
                            "use 0 (no consistency step) or a weight such as 0.1-1")
    refine_cfg = _refine_config(refine, refine_l, inp.kind, names[1], weights_dir)
    if dc_mu is None and (inp.kind == "total" or refine_cfg is not None):
        dc_mu = 0.0   # no consistency step after the pipeline's own background removal, nor before the refinement
    if bfr in ("vsharp", "lbv") and inp.kind == "total":  # classical background removal, then the VN
        from dataclasses import replace

        bfr_note = None
        if bfr == "lbv":
            from ..methods.lbv import lbv

            def remove(dev):
                return lbv(inp.field, inp.mask, inp.voxel_size, peel=LBV_PEEL, device=dev)
        else:
            from ..methods.vsharp import vsharp

            def remove(dev):
                return vsharp(inp.field, inp.mask, inp.voxel_size, device=dev)
        name = {"lbv": "LBV", "vsharp": "V-SHARP"}[bfr]
        report(progress, 0.05, f"background-field removal ({name})")
        vdev = pick_device(device or inp.device)
        cuda = vdev.startswith("cuda")
        try:   # torch on the GPU; numpy/scipy on the CPU (and after a GPU failure)
            local, mask2 = remove(vdev if cuda else None)
        except (RuntimeError, torch.OutOfMemoryError) as exc:
            if not cuda:
                raise
            torch.cuda.empty_cache()
            bfr_note = f"{name} on {vdev} failed ({type(exc).__name__}); ran on the CPU"
            vdev = "cpu"
            local, mask2 = remove(None)
        t_bfr = time.perf_counter() - t0
        res = _run(replace(inp, field=local, mask=mask2, kind="local"), names, progress, weights_dir, device,
                   margin, pad, tile, overlap, max_voxels, method, out_mask=np.asarray(inp.mask) > 0, tta=tta,
                   dc_mu=dc_mu, refine=refine_cfg is not None, refine_l=None if refine_cfg is None else refine_cfg["l"],
                   precision=precision, level_path=bfr)
        res.timings[bfr] = t_bfr
        res.timings["total"] = time.perf_counter() - t0
        res.params["bfr"] = bfr
        res.params[f"{bfr}_device"] = vdev
        if bfr_note:
            res.params[f"{bfr}_fallback"] = bfr_note
        return res
    dev = pick_device(device or inp.device)
    tta_auto = tta in (None, "auto")
    if tta_auto:   # the weights' default for the device chosen here (re-resolved if CUDA falls back to the CPU)
        from .weights import load_manifest

        tta_defaults = load_manifest(weights_dir).get("defaults", {})
        tta = default_tta(tta_defaults, dev)
    report(progress, 0.02, "loading weights")
    bfr_name, inv_name = names
    bfr_net = load_model(bfr_name, weights_dir) if (bfr_name and inp.kind == "total") else None
    inv = load_model(inv_name, weights_dir)
    if isinstance(inv, VariationalNetwork) and pad is not None:
        inv.pad = pad
    if isinstance(inv, VariationalNetwork) and dc_mu is not None:
        inv.dc_mu = float(dc_mu)
    if isinstance(inv, VariationalNetwork):   # a level calibrated for this input path overrides arch.level
        path = level_path or ("local" if inp.kind == "local" else (bfr or "unet"))
        lv = path_level(weights_dir, inv_name, path)
        if lv is not None:
            inv.set_level(lv)
    timings = {"load": time.perf_counter() - t0}
    # a fill_rim VN predicts chi on out_mask (the brain mask) from the field on inp.mask (V-SHARP's eroded mask)
    om = out_mask if (out_mask is not None and getattr(inv, "fill_rim", False)) else None
    final_mask = inp.mask if om is None else (om | (np.asarray(inp.mask) > 0))
    sl = bbox(final_mask, margin)
    field = np.ascontiguousarray(inp.field[sl])
    mask = inp.mask[sl]
    omask = None if om is None else final_mask[sl]
    nvox = int(np.prod(field.shape))

    def attempt(dev: str):
        # channels-last convolution weights on the CPU: oneDNN then keeps the activations channels-last too
        # (U-Net forward at 160x192x176, 2 threads: 3.9 -> 2.2 s; no gain at 64^3); CUDA keeps the default layout
        fmt = torch.channels_last_3d if (dev == "cpu" and CPU_CHANNELS_LAST) else torch.contiguous_format
        bf = bfr_net.to(dev, memory_format=fmt) if bfr_net is not None else None
        iv = inv.to(dev, memory_format=fmt)
        cdt = compute_dtype(precision, dev)
        for net in (bf, iv):
            for mod in (net.modules() if net is not None else ()):
                if isinstance(mod, UNet3D):
                    mod.compute_dtype = cdt
        params["precision"] = "float32" if cdt is None else "bfloat16"
        if tile is not None or nvox > max_voxels:  # tile the local U-Net calls; the FFT data term stays global
            for net in (bf, iv):
                if net is not None:
                    net.tile = (int(tile or 128), int(overlap))
        f = torch.from_numpy(field)[None, None].to(dev)
        m = torch.from_numpy(mask.astype(np.float32))[None, None].to(dev)
        om_t = None if omask is None else torch.from_numpy(omask.astype(np.float32))[None, None].to(dev)
        t = {}
        cuda = dev.startswith("cuda")
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        # float32 convolutions on CUDA (cuDNN's TF32 default would leave ~1e-3 relative differences to the CPU)
        cudnn = torch.backends.cudnn
        flags = cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                            allow_tf32=False)
        with torch.inference_mode(), flags:
            if bf is not None:
                report(progress, 0.1, "background-field removal (U-Net)")
                ts = time.perf_counter()
                lf = bf(f, m)
                sync()
                t["bfr"] = time.perf_counter() - ts
            else:
                lf = f * m
            report(progress, 0.4, "dipole inversion")
            ts = time.perf_counter()
            if isinstance(iv, VariationalNetwork):
                chi = _flip_average(iv, lf, m, om_t, inp.voxel_size, inp.b0_dir, int(tta))
            else:
                chi = iv(lf, m)
            sync()
            t["inversion"] = time.perf_counter() - ts
        return chi[0, 0].float().cpu().numpy(), lf[0, 0].float().cpu().numpy(), t

    used = [bfr_name] if bfr_net is not None else []   # networks this run loaded: no background U-Net after
    #                                                    V-SHARP / LBV or for a local field
    params = {"margin": margin, "pad": pad, "tile": tile, "crop_shape": list(field.shape), "weights": used + [inv_name],
              "bfr": bfr if inp.kind == "total" else None, "tta": int(tta)}
    if isinstance(inv, VariationalNetwork):
        params["dc_mu"] = inv.dc_mu
        params["level"] = inv.level   # chi's calibrated level (units of the field's robust scale)
        params["level_path"] = path
    try:
        chi_c, lf_c, t = attempt(dev)
    except torch.OutOfMemoryError:
        if not dev.startswith("cuda"):
            raise
        torch.cuda.empty_cache()
        params["fallback"] = "CUDA out of memory; ran on the CPU"
        dev = "cpu"
        if tta_auto:   # the CPU's own default flips (attempt reads tta when it runs)
            tta = params["tta"] = default_tta(tta_defaults, dev)
        chi_c, lf_c, t = attempt(dev)
    timings.update(t)
    if refine_cfg is not None:
        report(progress, 0.8, "refinement (TV with the VN's chi as prior)")
        ts = time.perf_counter()
        chi_c, params["refine"], params["refine_device"] = _refine(chi_c, field, mask, inp, refine_cfg, dev)
        timings["refine"] = time.perf_counter() - ts
    chi = np.zeros(inp.field.shape, np.float32)
    lf = np.zeros(inp.field.shape, np.float32)
    chi[sl] = chi_c
    lf[sl] = lf_c
    chi *= final_mask
    lf *= inp.mask
    timings["total"] = time.perf_counter() - t0
    report(progress, 1.0, "done")
    if om is not None:
        params["fill_rim"] = True
    return QSMResult(chi=chi, method=method, mask=final_mask, local_field=lf, timings=timings, device=dev, params=params)


def _refine_config(refine, refine_l, kind: str, inv_name: str, weights_dir) -> Optional[dict]:
    """Settings of the TV refinement (:mod:`nextqsm.models.refine`), or None when it is off.

    ``refine=None``: on for a local field given by the user when the manifest has
    ``defaults.refine_local`` (and the inversion is the VN), off after the pipeline's own background removal
    (``kind='total'``); True / False (or 1 / 0) force it. ``refine_l``: a fixed scale-free TV weight
    instead of the manifest's ``l(c)``.
    """
    if refine is not None and not (isinstance(refine, bool) or (isinstance(refine, int) and refine in (0, 1))):
        raise QSMInputError("refine", f"must be true/false (or 1/0), got {refine!r}",
                            "use --param refine=true to force the TV refinement, refine=false to skip it")
    if refine_l is not None and (isinstance(refine_l, bool) or not (isinstance(refine_l, (int, float))
                                                                      and np.isfinite(refine_l) and refine_l > 0)):
        raise QSMInputError("refine_l", f"must be a finite number > 0, got {refine_l!r}",
                            "use e.g. 0.05 (lam = refine_l x RMS of the local field), or leave it unset")
    if inv_name != "nextqsm-vn" or refine is False or refine == 0:
        return None
    if refine is None and kind == "total":
        return None
    from .refine import DEFAULT_REFINE
    from .weights import load_manifest

    cfg = load_manifest(weights_dir).get("defaults", {}).get("refine_local")
    if cfg is None:
        if refine is None:
            return None
        cfg = DEFAULT_REFINE
    cfg = dict(cfg)
    cfg["l"] = None if refine_l is None else float(refine_l)
    return cfg


def _refine(chi: np.ndarray, field: np.ndarray, mask: np.ndarray, inp: QSMInput, cfg: dict, dev: str):
    """TV refinement of the VN's ``chi`` on the crop (ppm); returns (chi, report dict, device used)."""
    import torch

    from .refine import nondipolar_fraction, refine_weight, tv_refine

    m = np.asarray(mask) > 0
    c = nondipolar_fraction(field, m, inp.voxel_size, inp.b0_dir)
    l = cfg["l"] if cfg["l"] is not None else refine_weight(c, cfg["coef"], cfg["power"], cfg["c_range"])
    try:
        ref, lam = tv_refine(field, m, chi, inp.voxel_size, inp.b0_dir, l, cfg["mu"], device=dev)
    except torch.OutOfMemoryError:
        if not dev.startswith("cuda"):
            raise
        torch.cuda.empty_cache()
        dev = "cpu"
        ref, lam = tv_refine(field, m, chi, inp.voxel_size, inp.b0_dir, l, cfg["mu"], device=dev)
    # outside the data mask (the rim a fill_rim VN predicts after V-SHARP) the VN's chi stays
    out = np.where(m, ref, chi).astype(np.float32)
    return out, {"method": "tv", "c": round(c, 4), "l": round(float(l), 5), "lam_ppm": lam, "mu": cfg["mu"]}, dev


#: Test-time augmentation: numbers of flips averaged, and the flipped axes (of i, j, k) in order of use.
FLIP_COUNTS = (1, 2, 4, 8)
FLIPS = ((), (0,), (1,), (0, 1), (2,), (0, 2), (1, 2), (0, 1, 2))


def _flip_average(vn, field, mask, out_mask, voxel_size, b0_dir, n: int):
    """Mean of the VN's chi over the first ``n`` :data:`FLIPS` of its input (each flipped back).

    A flip of voxel axis a maps the dipole field of chi to the field of the flipped chi with the B0
    direction's component a negated (the kernel depends on (k . b)^2 only), so every flipped problem is
    solved with its own exact kernel; the learned regulariser is not flip-equivariant, and averaging
    reduces its variance. Shapes (1, 1, i, j, k); ppm in, ppm out.
    """
    b0 = np.asarray(b0_dir, dtype=np.float64).reshape(3)
    acc = None
    for axes in FLIPS[:n]:
        dims = [2 + a for a in axes]
        fl = (lambda t: t.flip(dims)) if axes else (lambda t: t)
        b = b0.copy()
        b[list(axes)] *= -1.0
        chi = fl(vn(fl(field), fl(mask), voxel_size, tuple(b),
                    out_mask=None if out_mask is None else fl(out_mask)))
        acc = chi if acc is None else acc + chi
    return acc / float(n)


def run_nextqsm(inp: QSMInput, progress=None, weights_dir=None, device: Optional[str] = None, margin: int = 8,
                pad: Optional[int] = 16, tile: Optional[int] = None, overlap: int = 16,
                max_voxels: int = 24_000_000, bfr: Optional[str] = None, tta: int | str | None = None,
                dc_mu: Optional[float] = None, refine: Optional[bool] = None, refine_l: Optional[float] = None,
                precision: str = "auto", **unknown) -> QSMResult:
    """NeXtQSM: U-Net background removal (``inp.kind == 'total'``) then the VN; fields/chi in ppm.

    Args:
        inp: field (ppm, total or local), mask, voxel size (mm), B0 direction (voxel axes).
        weights_dir: folder with ``manifest.json`` (default: the shipped weights).
        device: 'auto' | 'cpu' | 'cuda' (default ``inp.device``); CUDA OOM falls back to the CPU.
        margin: voxels kept around the mask's bounding box.
        pad: zero padding (voxels per side) of the VN's FFT data term (``None``: a quarter of each size).
        tile / overlap / max_voxels: U-Net calls are tiled with cubes of ``tile`` voxels (default 128
            when the crop exceeds ``max_voxels``) and ``overlap`` voxels of context.
        bfr: 'unet' (NeXtQSM's background U-Net), 'vsharp' (classical V-SHARP, then the VN; the
            result's mask is V-SHARP's eroded mask, or the whole input mask when the VN was trained to
            fill the eroded rim, ``fill_rim``) or 'lbv' (LBV with ``LBV_PEEL``, then the VN, likewise).
            ``None``: :func:`default_bfr` of the manifest's defaults (shipped: LBV when every voxel edge
            is <= 2.25 mm, else V-SHARP), else 'unet'. Only used for ``inp.kind == 'total'``.
        tta: test-time augmentation: the VN's chi averaged over 1 (off), 2, 4 or 8 flips of the voxel
            axes (:func:`_flip_average`); costs ``tta`` VN runs. ``None`` / ``'auto'``: the manifest's
            ``defaults.tta`` for the device used (:func:`default_tta`), else 1.
        dc_mu: weight of the VN's final closed-form data-consistency step
            (:func:`nextqsm.models.vn.consistency_step`; 0 = off); ``None``: the shipped model's value
            for ``kind='local'`` input, off after the pipeline's background removal (module doc); off
            before the TV refinement unless given.
        refine: TV refinement of the VN's chi (:mod:`nextqsm.models.refine`): ``None`` = on for
            ``kind='local'`` input (the manifest's ``defaults.refine_local``), off for ``kind='total'``;
            True / False force it. ``refine_l``: fixed scale-free TV weight instead of ``l(c)``.
        precision: the U-Nets' convolutions in 'float32' or 'bfloat16' (autocast; the FFT data term stays
            float32); 'auto': :data:`CPU_AUTO_PRECISION` on a CPU with native bfloat16, else float32.
    Returns: QSMResult with chi and the local field (ppm, zero outside the mask), timings in s.
    """
    _check_unused(unknown, "nextqsm")
    return _run(inp, ("nextqsm-bfr", "nextqsm-vn"), progress, weights_dir, device, margin, pad, tile, overlap,
                max_voxels, "nextqsm", bfr, tta=tta, dc_mu=dc_mu, refine=refine, refine_l=refine_l,
                precision=precision)


def run_unet_baseline(inp: QSMInput, progress=None, weights_dir=None, device: Optional[str] = None, margin: int = 8,
                      tile: Optional[int] = None, overlap: int = 16, max_voxels: int = 24_000_000,
                      precision: str = "auto", **unknown) -> QSMResult:
    """Model-agnostic baseline (SHARQnet + DeepQSM style): U-Net background removal then a U-Net
    inversion, no data consistency. Same inputs/outputs as :func:`run_nextqsm`; assumes B0 along k."""
    _check_unused(unknown, "unet-baseline")
    return _run(inp, ("baseline-bfr", "baseline-inv"), progress, weights_dir, device, margin, None, tile, overlap,
                max_voxels, "unet-baseline", precision=precision)
