"""`nextqsm`: QSM from the command line.

Official-compatible form (units: FIELD in ppm, chi written in ppm):

    nextqsm FIELD_PPM MASK OUT [--method NAME] [--input total|local] [--b0-dir X Y Z] [--device auto|cpu|cuda]

Subcommands: ``demo`` (simulated head, every method, figure + metrics), ``methods`` (list),
``pipeline`` (wrapped multi-echo phase -> chi) and ``bids`` (whole BIDS datasets).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from .errors import QSMInputError

SUBCOMMAND_MODULES = ("nextqsm.demo", "nextqsm.cli_pipeline", "nextqsm.bids")
CONVENTIONS = (
    "Units and conventions: FIELD is a frequency/field map in ppm (divide Hz by 42.576*B0[T]; "
    "divide unwrapped phase [rad] by 2*pi*TE[s]*42.576e6*B0[T]*1e-6). chi is written in ppm, zero outside the mask, "
    "with the geometry (affine, header) of FIELD. The B0 direction is taken from the affine (B0 along scanner z) "
    "unless --b0-dir gives it in voxel-axis coordinates. The dipole kernel uses D(0)=0.")


def _method_help() -> str:
    from .pipeline import METHODS

    return "; ".join(f"{m.name}: {m.description}" for m in METHODS.values())


def _parse_param(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--param expects KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    for cast in (int, float):
        try:
            return k, cast(v)
        except ValueError:
            pass
    if v.lower() in ("true", "false"):
        return k, v.lower() == "true"
    return k, v


def official_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nextqsm", description=__doc__.split("\n\n")[0] + " " + CONVENTIONS,
        epilog="Other commands: nextqsm demo | methods | pipeline | bids  (nextqsm COMMAND --help)")
    p.add_argument("field", metavar="FIELD_PPM", help="3D NIfTI field map in ppm (total or local, see --input)")
    p.add_argument("mask", metavar="MASK", help="3D binary brain mask NIfTI on the FIELD grid")
    p.add_argument("out", metavar="OUT", help="output chi NIfTI (ppm); the local field goes to OUT with _localfield")
    p.add_argument("--method", default="nextqsm", help="QSM method (default nextqsm). " + _method_help())
    p.add_argument("--input", choices=("total", "local"), default="total",
                   help="'total': FIELD is the total field (background removal runs); 'local': already background-free")
    p.add_argument("--b0-dir", nargs=3, type=float, metavar=("X", "Y", "Z"),
                   help="B0 unit vector in voxel-axis (i, j, k) coordinates; default from the affine")
    p.add_argument("--voxel-size", nargs=3, type=float, metavar=("DI", "DJ", "DK"),
                   help="voxel size in mm (default from the header)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="compute device for torch methods (auto: CUDA when available, CPU fallback)")
    p.add_argument("--allow-any-range", action="store_true",
                   help="skip the check that FIELD looks like ppm (not Hz or radians)")
    p.add_argument("--param", action="append", type=_parse_param, default=[], metavar="KEY=VALUE",
                   help="method parameter, e.g. --param tkd_threshold=0.19 (repeatable; names in `nextqsm.methods.pipelines`)")
    p.add_argument("--reference", default="none", metavar="none|mean|ROI",
                   help="reference chi: none (as the method returns it; default), mean (zero mean over the brain "
                        "mask) or an ROI mask NIfTI on the FIELD grid (zero mean over it, e.g. CSF)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def load_field_and_mask(field_path: str, mask_path: str, allow_any_range: bool = False,
                        voxel_size=None, b0_dir=None, kind: str = "total"):
    """Load and validate FIELD [ppm] and MASK; return (QSMInput kwargs, field Volume)."""
    import numpy as np

    from .geometry import b0_direction, check_voxel_size
    from .io import load_nifti
    from .validation import check_field_ppm, check_finite, check_mask, check_same_grid

    fv = load_nifti(field_path, ndim=3, name=f"FIELD ({field_path})")
    mv = load_nifti(mask_path, ndim=3, name=f"MASK ({mask_path})")
    mask = check_mask(mv.data, f"MASK ({mask_path})", like=fv.data, like_name="FIELD")
    check_same_grid(fv.affine, mv.affine, f"FIELD ({field_path})", f"MASK ({mask_path})")
    check_finite(fv.data, f"FIELD ({field_path})", mask)
    field = np.where(mask, np.nan_to_num(fv.data), 0).astype(np.float32)
    check_field_ppm(field, mask, f"FIELD ({field_path})", allow=allow_any_range)
    vs = check_voxel_size(voxel_size, "--voxel-size") if voxel_size else fv.voxel_size
    bdir = b0_direction(fv.affine, b0_dir, name="--b0-dir")
    return dict(field=field, mask=mask, voxel_size=vs, b0_dir=bdir, kind=kind), fv


def load_reference(value: str, fv):
    """``--reference``: 'none' / 'mean', or an ROI mask NIfTI on the grid of the field volume ``fv`` (checked)."""
    if value in ("none", "mean"):
        return value
    if not Path(value).exists():
        raise QSMInputError("--reference", f"{value!r} is neither 'none', 'mean' nor an existing ROI file",
                            "use none, mean, or the path of an ROI mask NIfTI on the FIELD grid")
    from .io import load_nifti
    from .validation import check_mask, check_same_grid

    rv = load_nifti(value, ndim=3, name=f"--reference ROI ({value})")
    roi = check_mask(rv.data, f"--reference ROI ({value})", like=fv.data, like_name="FIELD")
    check_same_grid(fv.affine, rv.affine, "FIELD", f"--reference ROI ({value})")
    return roi


def run_sidecar(args: argparse.Namespace, res, kw: dict) -> dict:
    """What produced ``args.out`` (written next to it as a BIDS-style JSON sidecar): method, its parameters as run
    (e.g. NeXtQSM's background removal, flips, chi level), device, timings, geometry, inputs and, for the networks,
    the weights' sha256."""
    from .pipeline import run_record

    meta = {**run_record(res), "InputField": str(args.field), "InputKind": args.input, "Mask": str(args.mask),
            "Reference": args.reference, "B0Direction": [float(b) for b in kw["b0_dir"]],
            "VoxelSize_mm": [float(v) for v in kw["voxel_size"]]}
    names = [n for n in (res.params or {}).get("weights", []) if n]
    if names:
        from .models.weights import load_manifest

        models = load_manifest(dict(args.param).get("weights_dir")).get("models", {})
        meta["Weights"] = {n: models.get(n, {}).get("sha256") for n in names}
    return meta


def run_official(args: argparse.Namespace) -> int:
    from .io import save_nifti, sidecar_path, with_suffix_tag, write_json_atomic
    from .pipeline import QSMInput, run

    kw, fv = load_field_and_mask(args.field, args.mask, args.allow_any_range, args.voxel_size, args.b0_dir, args.input)
    inp = QSMInput(device=args.device, **kw)
    params = dict(args.param)
    if "reference" in params and args.reference != "none":
        raise QSMInputError("--param reference", "given twice (also --reference)", "use --reference alone")
    reference = load_reference(str(params.pop("reference", args.reference)), fv)
    from .progress import TqdmProgress

    with TqdmProgress(args.method, disable=args.quiet) as prog:
        res = run(args.method, inp, progress=prog, reference=reference, **params)
    out = Path(args.out)
    written = []
    try:
        written.append(save_nifti(res.chi, fv.affine, out, header=fv.header, description=f"chi ppm {args.method}"))
        if res.local_field is not None:
            written.append(save_nifti(res.local_field, fv.affine, with_suffix_tag(out, "_localfield"),
                                      header=fv.header, description=f"local field ppm {args.method}"))
        written.append(write_json_atomic(sidecar_path(out), run_sidecar(args, res, kw)))   # last: the done marker
    except BaseException:
        for w in written:
            if os.path.exists(w):
                os.unlink(w)
        raise
    if not args.quiet:
        print(f"{args.method}: chi -> {out} ({res.timings.get('total', 0):.1f} s on {res.device})", file=sys.stderr)
    return 0


def methods_command(args: argparse.Namespace) -> int:
    from .pipeline import METHODS, available_methods

    avail = set(available_methods())
    for m in METHODS.values():
        print(f"{m.name:15s} {'available' if m.name in avail else 'missing  '}  {m.description}")
    return 0


def register_subcommands(sub: argparse._SubParsersAction, modules: tuple[str, ...]) -> None:
    """Let each module in ``modules`` add its subcommand via ``register(sub)``; absent modules are skipped."""
    for mod in modules:
        try:
            m = importlib.import_module(mod)
        except ImportError as exc:
            if exc.name != mod:
                raise
            continue
        m.register(sub)


def build_subparsers() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nextqsm", description=CONVENTIONS)
    sub = p.add_subparsers(dest="command", required=True)
    mp = sub.add_parser("methods", help="list the QSM methods and whether they are available")
    mp.set_defaults(func=methods_command)
    register_subcommands(sub, SUBCOMMAND_MODULES)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        sub = build_subparsers()
        commands = set(sub._subparsers._group_actions[0].choices)  # noqa: SLF001
        if argv and argv[0] in commands:
            args = sub.parse_args(argv)
            return int(args.func(args) or 0)
        args = official_parser().parse_args(argv)
        return run_official(args)
    except QSMInputError as exc:
        print(f"nextqsm: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
