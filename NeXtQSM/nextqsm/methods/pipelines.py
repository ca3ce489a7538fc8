"""Registered classical pipelines: background removal (V-SHARP or PDF) then a dipole inversion.

Each function has the signature ``fn(inp: QSMInput, progress=None, **params) -> QSMResult``
(see ``nextqsm.pipeline``). Background removal is skipped when ``inp.kind == 'local'``.
Parameters are passed through by prefix:

* ``vsharp_radii_mm`` (default 12..1 mm), ``vsharp_threshold`` (0.05);
* ``pdf_tol`` (1e-3), ``pdf_maxiter`` (50);
* ``tkd_threshold`` (0.19); ``l2_lam``; ``tv_lam``, ``tv_rho``, ``tv_iters``, ``tv_mu2``;
  ``ilsqr_tol``, ``ilsqr_maxiter``, ... (any keyword of :func:`nextqsm.methods.ilsqr.ilsqr`
  prefixed with ``ilsqr_``).

Names: ``tkd`` (V-SHARP + TKD for total fields, TKD only for local fields), ``vsharp-ilsqr``
(the STI Suite-style reference), ``vsharp-tv``, ``pdf-tv``, ``vsharp-l2``.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

import numpy as np

from ..pipeline import QSMInput, QSMResult, report

ProgressFn = Optional[Callable[[float, str], None]]


def _take(params: dict, prefix: str) -> dict[str, Any]:
    """Pop the ``prefix_``-named parameters and return them without the prefix."""
    keys = [k for k in params if k.startswith(prefix + "_")]
    return {k[len(prefix) + 1:]: params.pop(k) for k in keys}


_NOT_PARAMS = {"local_field", "total_field", "mask", "voxel_size", "b0_dir", "magnitude", "device", "callback",
               "return_steps"}


def _checked(fn: Callable, kw: dict, prefix: str) -> tuple[dict, dict]:
    """Validate ``kw`` against ``fn``'s keywords; return (kw, all tunable parameters with defaults, prefixed)."""
    import inspect

    sig = inspect.signature(fn).parameters
    allowed = [k for k in sig if k not in _NOT_PARAMS]
    bad = [k for k in kw if k not in allowed]
    if bad:
        from ..errors import QSMInputError
        raise QSMInputError("--params", f"unknown parameter(s) {', '.join(prefix + '_' + k for k in bad)}",
                            f"use {', '.join(prefix + '_' + k for k in allowed)}")
    used = {k: sig[k].default for k in allowed}
    used.update(kw)
    clean = {f"{prefix}_{k}": (list(map(float, v)) if (v is not None and np.ndim(v)) else v) for k, v in used.items()}
    return kw, clean


def _check_unused(params: dict, method: str) -> None:
    if params:
        from ..errors import QSMInputError
        raise QSMInputError("--params", f"unknown parameter(s) for {method}: {', '.join(sorted(params))}",
                            "check the names in the method's documentation (nextqsm.methods.pipelines)")


def _device_name(inp: QSMInput) -> str:
    from .l2 import resolve_device

    return resolve_device(inp.device)


def _bfr(inp: QSMInput, method: str, params: dict, progress: ProgressFn, used: dict, timings: dict,
         span: float) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Background removal stage; returns (local field, mask used, local field or None if not computed)."""
    if inp.kind == "local":
        _take(params, "vsharp"), _take(params, "pdf"), _take(params, "lbv")
        return inp.field, inp.mask, None
    t0 = time.perf_counter()
    if method == "vsharp":
        from .vsharp import vsharp

        kw, clean = _checked(vsharp, _take(params, "vsharp"), "vsharp")
        _take(params, "pdf"), _take(params, "lbv")
        report(progress, 0.0, "V-SHARP background removal")
        local, mask = vsharp(inp.field, inp.mask, inp.voxel_size, **kw)
        used.update(clean)
        timings["vsharp"] = time.perf_counter() - t0
    elif method == "lbv":
        from .lbv import lbv

        kw, clean = _checked(lbv, _take(params, "lbv"), "lbv")
        _take(params, "vsharp"), _take(params, "pdf")
        report(progress, 0.0, "LBV background removal")
        local, mask = lbv(inp.field, inp.mask, inp.voxel_size,
                          callback=lambda i, n: report(progress, span * i / n, "LBV background removal"), **kw)
        used.update(clean)
        timings["lbv"] = time.perf_counter() - t0
    else:
        from .pdf import pdf

        kw, clean = _checked(pdf, _take(params, "pdf"), "pdf")
        _take(params, "vsharp"), _take(params, "lbv")
        report(progress, 0.0, "PDF background removal")
        local = pdf(inp.field, inp.mask, inp.voxel_size, inp.b0_dir, magnitude=inp.magnitude,
                    device=inp.device, callback=lambda i, n: report(progress, span * i / n, "PDF background removal"),
                    **kw)
        mask = inp.mask
        used.update(clean)
        timings["pdf"] = time.perf_counter() - t0
    report(progress, span, "background removed")
    return local, mask, local


def _result(name: str, chi, mask, local, timings, device, used) -> QSMResult:
    chi = np.where(mask, chi, 0).astype(np.float32)
    if local is not None:
        local = np.where(mask, local, 0).astype(np.float32)
    return QSMResult(chi=chi, method=name, mask=mask, local_field=local, timings=timings, device=device,
                     params=used)


def run_tkd(inp: QSMInput, progress: ProgressFn = None, **params) -> QSMResult:
    """V-SHARP (total fields only) then TKD (threshold ``tkd_threshold``, default 0.19)."""
    from .tkd import tkd

    params, used, timings = dict(params), {}, {}
    local, mask, lf = _bfr(inp, "vsharp", params, progress, used, timings, 0.7)
    kw, clean = _checked(tkd, _take(params, "tkd"), "tkd")
    _check_unused(params, "tkd")
    t0 = time.perf_counter()
    report(progress, 0.75, "TKD inversion")
    chi = tkd(local, mask, inp.voxel_size, inp.b0_dir, **kw)
    timings["tkd"] = time.perf_counter() - t0
    used.update(clean)
    report(progress, 1.0, "done")
    return _result("tkd", chi, mask, lf, timings, "cpu", used)


def run_vsharp_l2(inp: QSMInput, progress: ProgressFn = None, **params) -> QSMResult:
    """V-SHARP then closed-form gradient-regularised L2 (``l2_lam``)."""
    from .l2 import l2_inversion

    params, used, timings = dict(params), {}, {}
    local, mask, lf = _bfr(inp, "vsharp", params, progress, used, timings, 0.7)
    kw, clean = _checked(l2_inversion, _take(params, "l2"), "l2")
    _check_unused(params, "vsharp-l2")
    t0 = time.perf_counter()
    report(progress, 0.75, "L2 inversion")
    chi = l2_inversion(local, mask, inp.voxel_size, inp.b0_dir, **kw)
    timings["l2"] = time.perf_counter() - t0
    used.update(clean)
    report(progress, 1.0, "done")
    return _result("vsharp-l2", chi, mask, lf, timings, "cpu", used)


def _tv_stage(name, inp, local, mask, lf, params, progress, used, timings, start):
    from .tv import tv_admm

    kw, clean = _checked(tv_admm, _take(params, "tv"), "tv")
    _check_unused(params, name)
    dev = _device_name(inp)
    t0 = time.perf_counter()
    chi = tv_admm(local, mask, inp.voxel_size, inp.b0_dir, magnitude=inp.magnitude, device=dev,
                  callback=lambda i, n: report(progress, start + (1 - start) * i / n, "TV inversion (ADMM)"), **kw)
    timings["tv"] = time.perf_counter() - t0
    used.update(clean)
    report(progress, 1.0, "done")
    return _result(name, chi, mask, lf, timings, dev, used)


def run_vsharp_tv(inp: QSMInput, progress: ProgressFn = None, **params) -> QSMResult:
    """V-SHARP then TV-ADMM (``tv_lam``, ``tv_rho``, ``tv_iters``, ``tv_mu2``)."""
    params, used, timings = dict(params), {}, {}
    local, mask, lf = _bfr(inp, "vsharp", params, progress, used, timings, 0.25)
    return _tv_stage("vsharp-tv", inp, local, mask, lf, params, progress, used, timings, 0.25)


def run_pdf_tv(inp: QSMInput, progress: ProgressFn = None, **params) -> QSMResult:
    """PDF then TV-ADMM (``pdf_tol``, ``pdf_maxiter``, ``tv_*``)."""
    params, used, timings = dict(params), {}, {}
    local, mask, lf = _bfr(inp, "pdf", params, progress, used, timings, 0.4)
    return _tv_stage("pdf-tv", inp, local, mask, lf, params, progress, used, timings, 0.4)


def run_lbv_tv(inp: QSMInput, progress: ProgressFn = None, **params) -> QSMResult:
    """LBV (Laplacian boundary value) then TV-ADMM (``lbv_tol``, ``lbv_maxiter``, ``lbv_peel``, ``tv_*``)."""
    params, used, timings = dict(params), {}, {}
    local, mask, lf = _bfr(inp, "lbv", params, progress, used, timings, 0.25)
    return _tv_stage("lbv-tv", inp, local, mask, lf, params, progress, used, timings, 0.25)


def run_vsharp_ilsqr(inp: QSMInput, progress: ProgressFn = None, **params) -> QSMResult:
    """V-SHARP then the iLSQR-style inversion (``ilsqr_*`` keywords of :func:`ilsqr`)."""
    from .ilsqr import ilsqr

    params, used, timings = dict(params), {}, {}
    local, mask, lf = _bfr(inp, "vsharp", params, progress, used, timings, 0.25)
    kw, clean = _checked(ilsqr, _take(params, "ilsqr"), "ilsqr")
    _check_unused(params, "vsharp-ilsqr")
    dev = _device_name(inp)
    t0 = time.perf_counter()
    chi = ilsqr(local, mask, inp.voxel_size, inp.b0_dir, magnitude=inp.magnitude, device=dev,
                callback=lambda frac, stage: report(progress, 0.25 + 0.75 * frac, stage), **kw)
    timings["ilsqr"] = time.perf_counter() - t0
    used.update(clean)
    report(progress, 1.0, "done")
    return _result("vsharp-ilsqr", chi, mask, lf, timings, dev, used)
