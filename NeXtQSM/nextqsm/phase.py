"""Phase input handling: units, vendor integer rescaling, sign, multi-echo loading, BIDS sidecars, QSM-CI params.

Phase units (``phase_units``):
* ``'rad'``: radians, used as they are (any range; wrapped data lie in [-pi, pi) or [0, 2 pi)).
* ``'integer'``: vendor integers rescaled linearly to [-pi, pi). Rule: when the data fit a known
  vendor range it is used (Siemens -4096..4095 -> x * pi / 4096; unsigned 12 bit 0..4095 ->
  x * 2 pi / 4096 - pi); otherwise the observed [min, max] is mapped to [-pi, pi]
  (ROMEO's rule: (x - min) / (max - min) * 2 pi - pi).
* ``'auto'``: radians when every finite value lies in [-pi, 2 pi] (with 1e-3 tolerance),
  otherwise the integer rule. The rule applied is reported in ``info['phase_units']``.

Sign (``sign``): the phase is multiplied by +1 or -1 before any processing. The library takes a
positive field [ppm] to give phase +2 pi f TE; use -1 for data stored with the opposite
(vendor-dependent) handedness. Tip: veins and iron-rich nuclei must come out paramagnetic
(chi > 0); if they are dark, flip the sign.

Echo times and field strength are taken, in order of precedence, from explicit arguments, a
QSM-CI ``params.json`` (keys ``TE`` [s] (list), ``B0`` [T], ``B0_dir``, ``voxel_size`` [mm]),
and BIDS JSON sidecars (``EchoTime`` [s], ``MagneticFieldStrength`` [T]).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .errors import QSMInputError
from .units import te_to_seconds

Vec3 = Sequence[float]
PI = float(np.pi)


# ----------------------------------------------------------------------------- units
def phase_to_radians(data: np.ndarray, units: str = "auto") -> tuple[np.ndarray, str]:
    """Convert phase data to radians; returns ``(phase_rad float32, rule applied)``. NaNs stay NaN."""
    x = np.asarray(data, dtype=np.float64)
    fin = np.isfinite(x)
    if not fin.any():
        raise QSMInputError("phase", "contains no finite values", "pass a phase image")
    lo, hi = float(x[fin].min()), float(x[fin].max())
    tol = 1e-3
    if units == "auto":
        units = "rad" if (lo >= -PI - tol and hi <= 2 * PI + tol) else "integer"
    if units == "rad":
        return x.astype(np.float32), f"radians (range {lo:.4g}..{hi:.4g}, used as is)"
    if units != "integer":
        raise QSMInputError("--phase-units", f"unknown unit {units!r}", "use rad, integer or auto")
    if hi <= lo:
        raise QSMInputError("phase", "is constant, so it cannot be rescaled to radians",
                            "pass a phase image in radians or vendor integers")
    if lo >= -4096 and hi <= 4095 and lo < -2048:
        return (x * (PI / 4096.0)).astype(np.float32), "Siemens integers -4096..4095 -> x*pi/4096"
    if lo >= 0 and hi <= 4095 and hi > 2048:
        return (x * (2 * PI / 4096.0) - PI).astype(np.float32), "unsigned 12-bit 0..4095 -> x*2pi/4096 - pi"
    return (((x - lo) / (hi - lo)) * 2 * PI - PI).astype(np.float32), \
        f"min/max rescaling [{lo:.6g}, {hi:.6g}] -> [-pi, pi]"


# ----------------------------------------------------------------------------- params / sidecars
def read_params_json(path: str | Path) -> dict[str, Any]:
    """QSM-CI ``params.json`` -> dict with ``TE`` (list of s), ``B0`` (T), ``B0_dir``, ``voxel_size`` (mm) when present.

    A BIDS sidecar passed here (``EchoTime``, ``MagneticFieldStrength``) is mapped onto the same keys.
    """
    p = Path(path)
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise QSMInputError(str(p), f"cannot be read as JSON ({exc})", "pass a valid params.json") from exc
    if not isinstance(obj, dict):
        raise QSMInputError(str(p), "is not a JSON object", "pass a QSM-CI params.json ({\"TE\": [...], \"B0\": 3, ...})")
    out: dict[str, Any] = {}
    te = obj.get("TE", obj.get("EchoTime"))
    if te is not None:
        out["TE"] = [te_to_seconds(t) for t in np.ravel(te)]
    b0 = obj.get("B0", obj.get("MagneticFieldStrength"))
    if b0 is not None:
        out["B0"] = float(b0)
    if obj.get("B0_dir") is not None:
        out["B0_dir"] = [float(v) for v in obj["B0_dir"]]
    if obj.get("voxel_size") is not None:
        out["voxel_size"] = [float(v) for v in obj["voxel_size"]]
    return out


def echo_number(path: str | Path) -> Optional[int]:
    """BIDS ``echo-<n>`` entity of a file name (None when absent)."""
    m = re.search(r"(?:^|_)echo-(\d+)", Path(path).name)
    return int(m.group(1)) if m else None


def order_echo_files(paths: Sequence[str | Path]) -> list[str]:
    """Order per-echo files by their ``echo-<n>`` entity when all have one; else keep the given order."""
    paths = [str(p) for p in paths]
    nums = [echo_number(p) for p in paths]
    if len(paths) > 1 and all(n is not None for n in nums):
        return [p for _, p in sorted(zip(nums, paths))]
    return paths


# ----------------------------------------------------------------------------- loading
@dataclass
class PhaseInputs:
    """Loaded multi-echo data. phase [rad] and magnitude: (i, j, k, echo) float32; TEs in s; B0 in T."""

    phase: np.ndarray
    magnitude: Optional[np.ndarray]
    tes_s: list[float]
    b0_t: float
    affine: np.ndarray
    header: Any
    voxel_size: tuple[float, float, float]
    b0_dir: tuple[float, float, float]
    mask: Optional[np.ndarray] = None
    info: dict = field(default_factory=dict)


def _load_echoes(paths: Sequence[str | Path], name: str):
    from .io import load_nifti
    from .validation import check_same_grid

    paths = order_echo_files(paths)
    vols = [load_nifti(p, ndim=4, name=name) for p in paths]
    for v in vols[1:]:
        if v.data.shape[:3] != vols[0].data.shape[:3]:
            raise QSMInputError(name, f"echo files have different shapes ({v.data.shape[:3]} vs {vols[0].data.shape[:3]})",
                                "pass echoes acquired on the same grid")
        check_same_grid(vols[0].affine, v.affine, paths[0], v.path or name)
    data = np.concatenate([v.data for v in vols], axis=3)
    return data, vols


def _sidecar_values(vols) -> tuple[list[float], Optional[float]]:
    """Echo times [s] and field strength [T] from the BIDS sidecars of the loaded volumes."""
    tes: list[float] = []
    b0 = None
    for v in vols:
        sc = v.sidecar or {}
        et = sc.get("EchoTime")
        if et is not None:
            tes.extend(te_to_seconds(t) for t in np.ravel(et))
        if sc.get("MagneticFieldStrength") is not None and b0 is None:
            b0 = float(sc["MagneticFieldStrength"])
    return tes, b0


def load_phase_inputs(phase_paths: Sequence[str | Path] | str | Path,
                      magnitude_paths: Sequence[str | Path] | str | Path | None = None,
                      mask_path: str | Path | None = None, te_s: Sequence[float] | None = None,
                      b0_t: float | None = None, params_path: str | Path | None = None,
                      phase_units: str = "auto", b0_dir: Vec3 | None = None) -> PhaseInputs:
    """Load phase (one 4D NIfTI or one 3D file per echo), magnitude, mask and acquisition parameters.

    Precedence for TE [s] and B0 [T]: explicit ``te_s``/``b0_t`` > ``params_path`` > BIDS sidecars.
    TE values above 1 are read as milliseconds. The B0 direction: ``b0_dir`` > params ``B0_dir``
    > the phase affine (:func:`nextqsm.geometry.b0_direction`).
    """
    from .geometry import b0_direction
    from .io import load_nifti
    from .validation import check_same_grid

    if isinstance(phase_paths, (str, Path)):
        phase_paths = [phase_paths]
    if isinstance(magnitude_paths, (str, Path)):
        magnitude_paths = [magnitude_paths]
    raw, pvols = _load_echoes(phase_paths, "--phase")
    phase, rule = phase_to_radians(raw, phase_units)
    affine, header = pvols[0].affine, pvols[0].header
    info: dict[str, Any] = {"phase_units": rule, "phase_files": [v.path for v in pvols]}

    mag = None
    if magnitude_paths:
        mag, mvols = _load_echoes(magnitude_paths, "--magnitude")
        if mag.shape != phase.shape:
            raise QSMInputError("--magnitude", f"shape {mag.shape} does not match the phase shape {phase.shape}",
                                "pass one magnitude echo per phase echo, on the same grid")
        check_same_grid(affine, mvols[0].affine, "--phase", "--magnitude")

    params = read_params_json(params_path) if params_path else {}
    sc_tes, sc_b0 = _sidecar_values(pvols)
    if te_s is not None and len(te_s) > 0:
        tes, info["te_source"] = [te_to_seconds(t) for t in te_s], "command line"
    elif params.get("TE"):
        tes, info["te_source"] = list(params["TE"]), "params.json"
    elif sc_tes:
        tes, info["te_source"] = sc_tes, "BIDS sidecar"
    else:
        raise QSMInputError("--te", "no echo times were given and none were found in a params.json or BIDS sidecar",
                            "pass --te with one echo time per echo in seconds (e.g. --te 0.004 0.008 0.012)")
    if len(tes) != phase.shape[3]:
        raise QSMInputError("--te", f"{len(tes)} echo time(s) for {phase.shape[3]} phase echo(es)",
                            "give exactly one TE (seconds) per echo")
    if b0_t is not None:
        b0, info["b0_source"] = float(b0_t), "command line"
    elif params.get("B0") is not None:
        b0, info["b0_source"] = float(params["B0"]), "params.json"
    elif sc_b0 is not None:
        b0, info["b0_source"] = sc_b0, "BIDS sidecar"
    else:
        raise QSMInputError("--b0", "the field strength is unknown (not given, not in params.json or a sidecar)",
                            "pass --b0 in tesla (e.g. --b0 3)")
    if not (0.05 <= b0 <= 20):
        raise QSMInputError("--b0", f"{b0} T is not a plausible MRI field strength", "give B0 in tesla, e.g. 3 or 7")

    if params.get("voxel_size") is not None:
        from .geometry import check_voxel_size

        vs = check_voxel_size(params["voxel_size"], "params.json voxel_size")
    else:
        vs = pvols[0].voxel_size
    if b0_dir is None and params.get("B0_dir") is not None:
        b0_dir = params["B0_dir"]
    bdir = b0_direction(affine, b0_dir)

    mask = None
    if mask_path:
        mv = load_nifti(mask_path, ndim=3, name="--mask")
        if mv.data.shape != phase.shape[:3]:
            raise QSMInputError("--mask", f"shape {mv.data.shape} does not match the phase shape {phase.shape[:3]}",
                                "resample the mask onto the phase grid")
        check_same_grid(affine, mv.affine, "--phase", "--mask")
        mask = np.nan_to_num(mv.data) > 0
    return PhaseInputs(phase=phase, magnitude=mag, tes_s=tes, b0_t=b0, affine=affine, header=header,
                       voxel_size=tuple(vs), b0_dir=bdir, mask=mask, info=info)


# ----------------------------------------------------------------------------- phase -> field
def phase_to_total_field(phase: np.ndarray, magnitude: Optional[np.ndarray], tes_s: Sequence[float], b0_t: float,
                         mask: Optional[np.ndarray] = None, voxel_size: Vec3 = (1, 1, 1),
                         unwrapper: str = "region", sign: int = 1, offset: str = "mcpc3ds",
                         mask_method: str = "otsu", mask_erode_mm: float = 0.0
                         ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Wrapped phase [rad] (i, j, k[, echo]) -> ``(total_field_ppm, mask, info)``.

    The mask is the given one (always wins) or one made from the magnitude
    (:func:`nextqsm.methods.brainmask.brain_mask`). Voxels with NaN phase are left out of the mask.
    See :func:`nextqsm.methods.echofit.fit_total_field` for the fit and its options.
    """
    from .methods.brainmask import mask_or_given
    from .methods.echofit import fit_total_field

    ph = np.asarray(phase, dtype=np.float32)
    if ph.ndim == 3:
        ph = ph[..., None]
    if ph.ndim != 4:
        raise QSMInputError("phase", f"expected a 3D or 4D (i, j, k, echo) image, got shape {ph.shape}",
                            "pass a 4D multi-echo phase or one 3D file per echo")
    mag = None if magnitude is None else np.asarray(magnitude, dtype=np.float32)
    if mag is not None and mag.ndim == 3:
        mag = mag[..., None]
    m, source = mask_or_given(mask, mag, voxel_size, shape=ph.shape, method=mask_method, erode_mm=mask_erode_mm)
    m = m & np.all(np.isfinite(ph), axis=3)
    if not m.any():
        raise QSMInputError("mask", "no voxel with finite phase lies inside the mask",
                            "check that mask and phase overlap, and that the phase is not all NaN")
    fld, info = fit_total_field(ph, tes_s, b0_t, m, mag, voxel_size, unwrapper=unwrapper, offset=offset, sign=sign)
    info["mask_source"] = source
    return fld, m, info
