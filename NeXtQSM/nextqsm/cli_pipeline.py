"""`nextqsm pipeline`: wrapped (multi-echo) phase -> total field -> chosen QSM method -> NIfTI outputs.

    nextqsm pipeline --phase P.nii.gz [P2 ...] --magnitude M.nii.gz [M2 ...] [--mask MASK]
                     --te TE1 [TE2 ...] --b0 B0 --out DIR --method NAME [--params params.json]

Writes to DIR, all with the geometry (affine, header) of the first phase file:
``chi.nii.gz`` (ppm), ``totalfield.nii.gz`` (ppm), ``localfield.nii.gz`` (ppm, when the method
computes one), ``mask.nii.gz`` (the mask the method used) and ``nextqsm.json`` (method,
parameters, sources of TE/B0, phase unit rule), written last.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

DEFAULT_METHOD = "tgv"


def _param(text: str) -> tuple[str, object]:
    """KEY=VALUE method parameter (shared with the main CLI)."""
    from .cli import _parse_param

    return _parse_param(text)


def add_processing_args(p: argparse.ArgumentParser) -> None:
    """Options shared by `pipeline` and `bids` (method, phase handling, device)."""
    from .methods.unwrap import UNWRAPPERS
    from .pipeline import METHODS

    p.add_argument("--method", default=DEFAULT_METHOD,
                   help=f"QSM method (default {DEFAULT_METHOD}); one of: {', '.join(METHODS)}")
    p.add_argument("--phase-units", choices=("auto", "rad", "integer"), default="auto",
                   help="units of the phase: rad (radians), integer (vendor integers rescaled to [-pi, pi): "
                        "Siemens -4096..4095 -> x*pi/4096, 0..4095 -> x*2pi/4096-pi, otherwise min..max -> -pi..pi), "
                        "auto (radians when all values lie in [-pi, 2pi], else integer). Default auto")
    p.add_argument("--phase-sign", type=int, choices=(1, -1), default=1,
                   help="multiply the phase by +1 or -1 before processing (vendor-dependent handedness; "
                        "use -1 if veins come out diamagnetic). Default 1")
    p.add_argument("--unwrapper", choices=tuple(UNWRAPPERS), default="region",
                   help="spatial unwrapping: " + "; ".join(f"{k}: {v}" for k, v in UNWRAPPERS.items())
                        + " (default region)")
    p.add_argument("--offset", choices=("mcpc3ds", "fit", "none"), default="mcpc3ds",
                   help="echo phase-offset handling: mcpc3ds (MCPC-3D-S, default), fit (fitted intercept), none")
    p.add_argument("--mask-method", choices=("otsu", "percentile"), default="otsu",
                   help="how the mask is made from the magnitude when --mask is not given (default otsu)")
    p.add_argument("--mask-erode-mm", type=float, default=0.0,
                   help="erode the magnitude-derived mask by this many mm (default 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="device for torch methods (auto: CUDA when available)")
    p.add_argument("--param", action="append", type=_param, default=[], metavar="KEY=VALUE",
                   help="method parameter, e.g. --param iterations=500 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def process(inputs, method: str, device: str = "auto", unwrapper: str = "region", sign: int = 1,
            offset: str = "mcpc3ds", mask_method: str = "otsu", mask_erode_mm: float = 0.0,
            method_params: Optional[dict] = None, progress: Optional[Callable[[float, str], None]] = None):
    """Run phase -> total field -> method on loaded :class:`nextqsm.phase.PhaseInputs`.

    Returns ``(result: QSMResult, total_field_ppm, field_mask, info)``.
    """
    from .phase import phase_to_total_field
    from .pipeline import QSMInput, report, run
    from .progress import scaled

    t0 = time.perf_counter()
    report(progress, 0.02, "total field from phase")
    total, mask, info = phase_to_total_field(inputs.phase, inputs.magnitude, inputs.tes_s, inputs.b0_t,
                                             inputs.mask, inputs.voxel_size, unwrapper=unwrapper, sign=sign,
                                             offset=offset, mask_method=mask_method,
                                             mask_erode_mm=mask_erode_mm)
    t_field = time.perf_counter() - t0
    report(progress, 0.2, f"running {method}")
    mag = None
    if inputs.magnitude is not None:
        mag = np.sqrt(np.sum(np.nan_to_num(inputs.magnitude) ** 2, axis=3)).astype(np.float32)
    te_eff = float(np.mean(inputs.tes_s))
    inp = QSMInput(field=total, mask=mask, voxel_size=inputs.voxel_size, b0_dir=inputs.b0_dir, kind="total",
                   magnitude=mag, device=device, b0_t=inputs.b0_t, te_s=te_eff)
    res = run(method, inp, progress=scaled(progress, 0.2, 0.97), **(method_params or {}))
    res.timings["total_field"] = t_field
    info = {k: v for k, v in info.items() if not isinstance(v, np.ndarray)}
    return res, total, mask, info


def provenance(inputs, res, info: dict, args_like: dict[str, Any]) -> dict[str, Any]:
    """JSON-able description of what was run (for nextqsm.json / BIDS derivative sidecars)."""
    from .pipeline import run_record

    return {
        **run_record(res),
        "EchoTime": inputs.tes_s,
        "MagneticFieldStrength": inputs.b0_t,
        "B0Direction": list(inputs.b0_dir),
        "VoxelSize_mm": list(inputs.voxel_size),
        "PhaseProcessing": {**info, **inputs.info, **args_like},
    }


def write_outputs(out_paths: dict[str, Path], res, total: np.ndarray, inputs, meta: dict) -> list[Path]:
    """Write chi / local field / total field / mask NIfTIs (atomic each) then the JSON (last = done marker)."""
    from .io import save_nifti, write_json_atomic

    aff, hdr = inputs.affine, inputs.header
    hdr3 = hdr.copy() if hdr is not None else None
    if hdr3 is not None and len(hdr3.get_data_shape()) > 3:
        hdr3.set_data_shape(hdr3.get_data_shape()[:3])
    written = [save_nifti(res.chi, aff, out_paths["chi"], header=hdr3, description=f"chi ppm {res.method}")]
    if res.local_field is not None and "local" in out_paths:
        written.append(save_nifti(res.local_field, aff, out_paths["local"], header=hdr3,
                                  description=f"local field ppm {res.method}"))
    if "total" in out_paths:
        written.append(save_nifti(total, aff, out_paths["total"], header=hdr3, description="total field ppm"))
    written.append(save_nifti(res.mask.astype(np.uint8), aff, out_paths["mask"], header=hdr3, dtype=np.uint8,
                              description="mask"))
    written.append(write_json_atomic(out_paths["json"], meta))
    return written


def run_pipeline_command(args: argparse.Namespace) -> int:
    from .phase import load_phase_inputs
    from .progress import TqdmProgress

    inputs = load_phase_inputs(args.phase, args.magnitude, args.mask, te_s=args.te, b0_t=args.b0,
                               params_path=args.params, phase_units=args.phase_units, b0_dir=args.b0_dir)
    out = Path(args.out)
    params = dict(args.param)
    with TqdmProgress(f"pipeline {args.method}", disable=args.quiet) as prog:
        res, total, _, info = process(inputs, args.method, args.device, args.unwrapper, args.phase_sign, args.offset,
                                      args.mask_method, args.mask_erode_mm, params, prog)
        prog(1.0, "writing")
    paths = {"chi": out / "chi.nii.gz", "local": out / "localfield.nii.gz", "total": out / "totalfield.nii.gz",
             "mask": out / "mask.nii.gz", "json": out / "nextqsm.json"}
    meta = provenance(inputs, res, info, {"unwrapper": args.unwrapper, "offset": args.offset,
                                          "phase_sign": args.phase_sign, "mask_method": args.mask_method})
    write_outputs(paths, res, total, inputs, meta)
    if not args.quiet:
        print(f"{res.method}: outputs in {out} ({res.timings.get('total', 0):.1f} s on {res.device})", file=sys.stderr)
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``pipeline`` subcommand (sets ``func`` returning an exit code)."""
    p = subparsers.add_parser(
        "pipeline", help="wrapped multi-echo phase (+ magnitude) -> total field -> chi (ppm)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phase", nargs="+", required=True, metavar="P",
                   help="phase NIfTI: one 4D file (echoes on the 4th axis) or one 3D file per echo "
                        "(ordered by BIDS echo-N when present); units see --phase-units")
    p.add_argument("--magnitude", nargs="+", metavar="M",
                   help="magnitude NIfTI(s), same layout as --phase (weights the echo fit; makes the mask)")
    p.add_argument("--mask", help="brain mask NIfTI on the phase grid (wins over the magnitude-derived mask)")
    p.add_argument("--te", nargs="+", type=float, metavar="TE",
                   help="echo times in seconds, one per echo (values > 1 are read as ms); default from "
                        "--params or the BIDS sidecars (EchoTime)")
    p.add_argument("--b0", type=float, help="field strength in tesla; default from --params or the sidecar "
                                            "(MagneticFieldStrength)")
    p.add_argument("--params", help="QSM-CI params.json (TE [s] list, B0 [T], B0_dir, voxel_size [mm])")
    p.add_argument("--b0-dir", nargs=3, type=float, metavar=("X", "Y", "Z"),
                   help="B0 unit vector in voxel-axis (i, j, k) coordinates; default from the affine "
                        "(B0 along scanner z)")
    p.add_argument("--out", required=True, help="output folder (chi, totalfield, localfield, mask NIfTI in ppm)")
    add_processing_args(p)
    p.set_defaults(func=run_pipeline_command)
    return p
