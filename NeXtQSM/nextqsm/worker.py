"""Worker subprocess: ``python -m nextqsm.worker request.json`` (PythonSlicer inside 3D Slicer).

The GUI process never imports torch; everything heavy happens here. Protocol on stdout
(read by ``nextqsm.jobs``): ``PROGRESS <0..1> <stage>`` lines, ``ERROR <json>`` for
user-facing input problems (exit code 2), other lines are log text. On success the
outputs are NIfTI files in ``out_dir`` with the input affine, and ``result.json`` is
written last (atomically); exit code 0.

Request (JSON):
``action``        "run" (default) or "info" (devices, torch version, CUDA build, memory).
``out_dir``       folder for the outputs (the job runner sets it).
``phase``         NIfTI path, 3D or 4D (i, j, k, echo); the affine is the node's IJKToRAS.
``phase_units``   "wrapped_rad" | "unwrapped_rad" | "hz" | "ppm"; ``phase_sign`` +1 (default) or -1
                  (scanners that store the conjugate); ``unwrapper`` "region" (default) | "laplacian".
``field_kind``    "total" (default) or "local" (the field is already background-free).
``te_s``          echo times in seconds (one per echo; needed for rad).
``b0_t``          field strength in tesla.
``b0_dir``        null (from the affine, B0 along scanner z) or three numbers in voxel axes.
``magnitude``     optional NIfTI (3D or 4D), for weighting and the automatic mask.
``mask``          optional NIfTI (0/1) on the phase grid; computed from the magnitude otherwise.
``methods``       names from ``nextqsm.pipeline.METHODS``; ``method_params`` {name: {param: value}}.
``device``        "auto" | "cuda" | "cpu"; ``memory_check`` (default true).
``debug_hold_s``  test hook only: after the first outputs, start a child process and keep
                  reporting progress for that many seconds (lets tests cancel a real worker tree).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .errors import QSMInputError
from .progress import line_progress, scaled

PHASE_UNITS = ("wrapped_rad", "unwrapped_rad", "hz", "ppm")

# Rough peak memory per method, in float32 copies of the padded volume (FFT work arrays,
# optimiser state). Used only for the pre-flight memory check.
MEMORY_COPIES = {"nextqsm": 60, "unet-baseline": 60, "tgv": 40, "vsharp-ilsqr": 30, "vsharp-tv": 30,
                 "pdf-tv": 30, "vsharp-l2": 20, "tkd": 16}


# ---------------------------------------------------------------------------- devices

def device_info() -> dict:
    """Python, torch version, CUDA build, GPUs (name, memory) and RAM; torch is optional."""
    import psutil

    from . import __version__
    from .pipeline import available_methods

    vm = psutil.virtual_memory()
    info: dict[str, Any] = {"python": platform.python_version(), "executable": sys.executable,
                            "nextqsm": __version__, "cpu_count": os.cpu_count(),
                            "ram_total_mb": vm.total // 2**20, "ram_available_mb": vm.available // 2**20,
                            "torch": None, "cuda_build": None, "cuda_available": False, "gpus": []}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda_build"] = torch.version.cuda
        info["cuda_available"] = bool(torch.cuda.is_available())
        from .models.inference import cpu_has_native_bf16

        info["cpu_bf16"] = cpu_has_native_bf16()
        if info["cuda_available"]:
            for i in range(torch.cuda.device_count()):
                free, total = torch.cuda.mem_get_info(i)
                info["gpus"].append({"index": i, "name": torch.cuda.get_device_name(i),
                                     "total_mb": total // 2**20, "free_mb": free // 2**20})
    except ImportError as exc:
        info["torch_error"] = str(exc)
    info["methods"] = available_methods()
    return info


def resolve_device(device: str) -> str:
    device = (device or "auto").lower()
    if device not in ("auto", "cpu", "cuda"):
        raise QSMInputError("device", f"unknown device {device!r}", "choose auto, cuda or cpu")
    if device == "cpu":
        return "cpu"
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if device == "cuda" and not has_cuda:
        raise QSMInputError("device", "CUDA was requested but no CUDA GPU is available to torch",
                            "choose 'auto' or 'cpu', or install the CUDA build of PyTorch (PyTorch extension)")
    return "cuda" if has_cuda else "cpu"


def memory_needed_mb(shape, methods) -> float:
    """Estimated peak memory in MB for the largest method on a volume of ``shape``."""
    from .dipole import padded_shape

    n = float(np.prod(padded_shape(tuple(shape[:3]))))
    copies = max((MEMORY_COPIES.get(m, 30) for m in methods), default=30)
    return n * 4 * copies / 2**20


def memory_check(shape, methods, device: str) -> str:
    """Pre-flight check; returns the device to use (auto-CUDA falls back to CPU when the GPU is too small)."""
    import psutil

    need = memory_needed_mb(shape, methods)
    if device == "cuda":
        import torch

        free = torch.cuda.mem_get_info()[0] / 2**20
        if need > free:
            raise QSMInputError("device", f"the GPU has {free:.0f} MB free, the run needs about {need:.0f} MB",
                                "choose CPU, close other GPU programs, or crop the volume")
        return device
    avail = psutil.virtual_memory().available / 2**20
    if need > avail:
        raise QSMInputError("memory", f"about {need:.0f} MB of RAM needed, {avail:.0f} MB available",
                            "close other programs, crop the volume to the head, or use a GPU")
    return device


# ---------------------------------------------------------------------------- phase -> field

def _fit_field_rad_per_s(phase: np.ndarray, te_s: np.ndarray, weights: Optional[np.ndarray]) -> np.ndarray:
    """Weighted least-squares slope through the origin of unwrapped phase vs TE -> rad/s, (i, j, k)."""
    te = te_s.reshape((1, 1, 1, -1))
    w = np.ones_like(phase) if weights is None else weights.astype(np.float32) ** 2
    return (np.sum(w * phase * te, axis=-1) / np.maximum(np.sum(w * te * te, axis=-1), 1e-30)).astype(np.float32)


def total_field_ppm(phase: np.ndarray, units: str, te_s, b0_t: float, magnitude: Optional[np.ndarray] = None,
                    mask: Optional[np.ndarray] = None, voxel_size=(1.0, 1.0, 1.0), sign: int = 1,
                    unwrapper: str = "region", progress=None) -> np.ndarray:
    """Field [ppm] (i, j, k) from phase (i, j, k, echo) in ``units``.

    wrapped_rad: ``nextqsm.methods.echofit.fit_total_field`` (spatial + temporal unwrapping,
    MCPC-3D-S phase offset, magnitude^2-weighted least squares; needs the mask);
    unwrapped_rad: the weighted least-squares slope of phase vs TE through the origin;
    hz / ppm: echoes averaged, Hz converted with gamma * B0.
    """
    from .units import hz_to_ppm, rad_to_ppm

    if units not in PHASE_UNITS:
        raise QSMInputError("phase units", f"unknown units {units!r}", f"choose one of {', '.join(PHASE_UNITS)}")
    if phase.ndim == 3:
        phase = phase[..., None]
    n_echo = phase.shape[-1]
    if units == "ppm":
        return phase.mean(axis=-1).astype(np.float32)
    if units == "hz":
        return hz_to_ppm(phase.mean(axis=-1), b0_t).astype(np.float32)
    te = np.atleast_1d(np.asarray(te_s if te_s is not None else [], dtype=np.float64))
    if te.size != n_echo:
        raise QSMInputError("echo times", f"{te.size} echo time(s) given for {n_echo} echo(es)",
                            "give one TE per echo, in ms in the module (e.g. 4.5, 9, 13.5) or in s in the request")
    if np.any(te <= 0) or np.any(te > 1.0):
        raise QSMInputError("echo times", f"echo times must be in seconds in (0, 1], got {te.tolist()}",
                            "give TE in seconds (the module converts ms)")
    mag = None
    if magnitude is not None:
        mag = magnitude if magnitude.ndim == 4 else np.repeat(magnitude[..., None], n_echo, axis=-1)
        if mag.shape != phase.shape:
            mag = None
    if units == "wrapped_rad":
        from .methods.echofit import fit_total_field

        if mask is None:
            raise QSMInputError("mask", "wrapped phase needs a mask (or a magnitude to compute one)",
                                "select a brain mask or a magnitude volume")
        if progress:
            progress(0.0, f"unwrapping and fitting {n_echo} echo(es)")
        field, _ = fit_total_field(phase, te.tolist(), b0_t, mask, magnitude=mag, voxel_size=voxel_size,
                                   unwrapper=unwrapper, sign=sign)
        return np.asarray(field, np.float32)
    slope = _fit_field_rad_per_s(sign * phase.astype(np.float32), te, mag)  # rad/s
    return rad_to_ppm(slope, 1.0, b0_t).astype(np.float32)  # rad/s over 1 s -> ppm


def auto_mask(magnitude: np.ndarray) -> np.ndarray:
    """Brain mask from the magnitude: Otsu threshold, hole filling, largest component, one erosion."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    mag = magnitude if magnitude.ndim == 3 else np.sqrt(np.sum(magnitude.astype(np.float64) ** 2, axis=-1))
    m = mag > threshold_otsu(mag)
    m = ndi.binary_fill_holes(m)
    lab, n = ndi.label(m)
    if n == 0:
        raise QSMInputError("magnitude", "no tissue found by thresholding", "select a mask")
    m = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    m = ndi.binary_erosion(m, iterations=1)
    return ndi.binary_fill_holes(m)


# ---------------------------------------------------------------------------- run

def _hold_for_test(seconds: float, progress) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # a grandchild to be killed
    print(f"CHILD {child.pid}", flush=True)
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        progress(0.5, "holding (test)")
        time.sleep(0.1)
    child.kill()


def run_request(req: dict, progress=None) -> dict:
    """Do the work of a request; returns the result dict (also written to ``out_dir/result.json``)."""
    from .geometry import b0_direction
    from .io import load_nifti, save_nifti, write_json_atomic
    from .pipeline import QSMInput, run
    from .validation import check_finite, check_mask

    progress = progress or (lambda f, s: None)
    if req.get("action", "run") == "info":
        out = {"info": device_info()}
        write_json_atomic(Path(req["out_dir"]) / "result.json", out)
        return out
    out_dir = Path(req["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    methods = list(req.get("methods") or [])
    if not methods:
        raise QSMInputError("methods", "no method selected", "tick at least one method")
    progress(0.0, "loading inputs")
    ph = load_nifti(req["phase"], ndim=4, name="phase")
    affine = ph.affine
    vs = ph.voxel_size
    shape = ph.data.shape[:3]
    device = resolve_device(req.get("device", "auto"))
    if req.get("memory_check", True):
        progress(0.02, "checking memory")
        device = memory_check(shape, methods, device)
    mag = None
    if req.get("magnitude"):
        m = load_nifti(req["magnitude"], ndim=None, name="magnitude")
        if m.data.shape[:3] != shape:
            raise QSMInputError("magnitude", f"shape {m.data.shape[:3]} differs from the phase shape {shape}",
                                "select the magnitude of the same acquisition")
        mag = m.data
    if req.get("mask"):
        mk = load_nifti(req["mask"], ndim=3, name="mask")
        mask = check_mask((mk.data > 0).astype(np.float32), "mask", ph.data, "phase")
    elif mag is not None:
        progress(0.04, "computing the brain mask from the magnitude")
        mask = auto_mask(mag)
    else:
        raise QSMInputError("mask", "no mask and no magnitude were given",
                            "select a brain mask (labelmap or segmentation) or a magnitude volume")
    units = req.get("phase_units", "ppm")
    te = req.get("te_s")
    b0_t = float(req.get("b0_t", 3.0))
    check_finite(ph.data, "phase")
    field = total_field_ppm(ph.data, units, te, b0_t, magnitude=mag, mask=mask, voxel_size=vs,
                            sign=int(req.get("phase_sign", 1)), unwrapper=req.get("unwrapper", "region"),
                            progress=scaled(progress, 0.05, 0.15, ""))
    bdir = b0_direction(affine, req.get("b0_dir"))
    te_s = float(np.atleast_1d(te)[0]) if te else None
    kind = req.get("field_kind", "total")
    save_nifti(mask.astype(np.float32), affine, out_dir / "mask.nii.gz")
    save_nifti(field, affine, out_dir / "field.nii.gz")
    result: dict[str, Any] = {"mask": "mask.nii.gz", "field": "field.nii.gz", "field_kind": kind,
                              "b0_dir": list(bdir), "voxel_size": list(vs), "device": device, "methods": {}}
    if req.get("debug_hold_s"):
        _hold_for_test(float(req["debug_hold_s"]), progress)
    params_all = req.get("method_params") or {}
    n = len(methods)
    for i, name in enumerate(methods):
        lo, hi = 0.15 + 0.85 * i / n, 0.15 + 0.85 * (i + 1) / n
        progress(lo, f"{name}: starting")
        inp = QSMInput(field=field, mask=mask, voxel_size=vs, b0_dir=bdir, kind=kind, magnitude=None if mag is None
                       else (mag if mag.ndim == 3 else mag[..., 0]), device=device, b0_t=b0_t, te_s=te_s)
        res = run(name, inp, progress=scaled(progress, lo, hi, f"{name}: "), **params_all.get(name, {}))
        entry = {"chi": f"{name}_chi.nii.gz", "timings": res.timings, "device": res.device,
                 "params": res.params}
        save_nifti(res.chi, affine, out_dir / entry["chi"], description=f"NeXtQSM {name} chi [ppm]")
        if res.local_field is not None:
            entry["local_field"] = f"{name}_localfield.nii.gz"
            save_nifti(res.local_field, affine, out_dir / entry["local_field"],
                       description=f"NeXtQSM {name} local field [ppm]")
        result["methods"][name] = entry
        progress(hi, f"{name}: done")
    write_json_atomic(out_dir / "result.json", result)
    return result


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv[0] == "--info":
        print(json.dumps(device_info(), indent=2))
        return 0
    progress = line_progress()
    try:
        req = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
        run_request(req, progress)
    except QSMInputError as exc:
        print("ERROR " + json.dumps({"input": exc.input_name, "problem": exc.problem, "fix": exc.fix}), flush=True)
        return 2
    except Exception:  # noqa: BLE001 (report everything to the GUI, then fail)
        traceback.print_exc(file=sys.stdout)
        sys.stdout.flush()
        return 1
    progress(1.0, "done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
