"""`nextqsm bids BIDS_DIR OUT_DIR`: QSM for every multi-echo GRE run of a BIDS dataset.

Runs are found by their BIDS names: ``sub-*/[ses-*/]anat/*_part-phase_MEGRE.nii[.gz]`` with
``echo-<n>`` entities (one 3D file per echo; a single 4D file without echo entity is accepted
too), magnitudes ``*_part-mag_MEGRE`` with the same entities, and JSON sidecars (``EchoTime``
[s], ``MagneticFieldStrength`` [T]). Each run goes through ``nextqsm pipeline``'s processing and
is written as BIDS derivatives to ``OUT_DIR/nextqsm/sub-*/[ses-*/]anat/``:

* ``<run>_Chimap.nii.gz``: chi [ppm];
* ``<run>_desc-local_fieldmap.nii.gz`` (when the method computes it) and
  ``<run>_desc-total_fieldmap.nii.gz``: fields [ppm];
* ``<run>_desc-brain_mask.nii.gz``: the mask used;
* ``<run>_Chimap.json``: method, parameters and acquisition values. It is written last, so a run
  whose JSON exists (with the same method) is done and is skipped (``--overwrite`` redoes it).

``<run>`` is the file name entities without ``echo-``/``part-`` (e.g. ``sub-01_ses-1_run-1``).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

PHASE_RE = re.compile(r"^(?P<name>sub-[^/]+?)_part-phase_MEGRE\.nii(\.gz)?$")


@dataclass
class BidsRun:
    """One multi-echo GRE acquisition: phase/magnitude files in echo order, output stem and folder."""

    subject: str
    session: Optional[str]
    stem: str                      # entities without echo-/part-, e.g. sub-01_ses-1_run-1
    anat_rel: Path                 # sub-01/ses-1/anat
    phase: list[Path] = field(default_factory=list)
    magnitude: list[Path] = field(default_factory=list)

    def out_dir(self, out_root: Path) -> Path:
        return out_root / "nextqsm" / self.anat_rel

    def out_paths(self, out_root: Path) -> dict[str, Path]:
        d, s = self.out_dir(out_root), self.stem
        return {"chi": d / f"{s}_Chimap.nii.gz", "local": d / f"{s}_desc-local_fieldmap.nii.gz",
                "total": d / f"{s}_desc-total_fieldmap.nii.gz", "mask": d / f"{s}_desc-brain_mask.nii.gz",
                "json": d / f"{s}_Chimap.json"}


def _strip(name: str, entity: str) -> str:
    return re.sub(rf"_{entity}-[a-zA-Z0-9]+", "", name)


def find_runs(bids_dir: str | Path, participant_labels: Optional[list[str]] = None) -> list[BidsRun]:
    """All multi-echo GRE runs under ``bids_dir`` (sorted), optionally only some participants."""
    from .phase import echo_number

    root = Path(bids_dir)
    wanted = None
    if participant_labels:
        wanted = {lab[4:] if lab.startswith("sub-") else lab for lab in participant_labels}
    runs: dict[str, BidsRun] = {}
    for f in sorted(root.glob("sub-*/**/anat/*_part-phase_MEGRE.nii*")):
        m = PHASE_RE.match(f.name)
        if not m:
            continue
        name = m.group("name")
        sub = re.match(r"sub-([a-zA-Z0-9]+)", name).group(1)
        if wanted is not None and sub not in wanted:
            continue
        ses_m = re.search(r"_ses-([a-zA-Z0-9]+)", name)
        stem = _strip(name, "echo")
        key = str(f.parent / stem)
        if key not in runs:
            runs[key] = BidsRun(subject=sub, session=ses_m.group(1) if ses_m else None, stem=stem,
                                anat_rel=f.parent.relative_to(root))
        runs[key].phase.append(f)
    out = []
    for run in runs.values():
        run.phase.sort(key=lambda p: echo_number(p) or 0)
        mags = []
        for p in run.phase:
            cand = p.with_name(p.name.replace("_part-phase_", "_part-mag_"))
            if cand.exists():
                mags.append(cand)
        run.magnitude = mags if len(mags) == len(run.phase) else []
        out.append(run)
    return sorted(out, key=lambda r: r.stem)


def is_done(run: BidsRun, out_root: Path, method: str) -> bool:
    """True when the run's JSON (written last) and chi exist for the same method."""
    paths = run.out_paths(out_root)
    if not (paths["json"].exists() and paths["chi"].exists()):
        return False
    try:
        return json.loads(paths["json"].read_text(encoding="utf-8")).get("Method") == method
    except (OSError, ValueError):
        return False


def write_dataset_description(out_root: Path) -> None:
    from .io import write_json_atomic

    import nextqsm

    p = out_root / "nextqsm" / "dataset_description.json"
    if not p.exists():
        write_json_atomic(p, {"Name": "NeXtQSM derivatives", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
                              "GeneratedBy": [{"Name": "nextqsm",
                                               "Version": getattr(nextqsm, "__version__", "unknown")}]})


def run_bids(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .cli_pipeline import process, provenance, write_outputs
    from .errors import QSMInputError
    from .phase import load_phase_inputs
    from .progress import TqdmProgress

    bids_dir, out_root = Path(args.bids_dir), Path(args.out_dir)
    if not bids_dir.is_dir():
        raise QSMInputError("BIDS_DIR", f"{bids_dir} is not a folder", "pass the root folder of a BIDS dataset")
    runs = find_runs(bids_dir, args.participant_label)
    if not runs:
        raise QSMInputError("BIDS_DIR", f"no multi-echo GRE runs (*_part-phase_MEGRE.nii[.gz]) found in {bids_dir}"
                            + (f" for participants {args.participant_label}" if args.participant_label else ""),
                            "check the dataset layout (sub-*/[ses-*/]anat/*_echo-N_part-phase_MEGRE.nii.gz)")
    write_dataset_description(out_root)
    n_done = n_skip = n_fail = 0
    for run in tqdm(runs, desc="runs", unit="run", file=sys.stderr, disable=args.quiet or len(runs) < 2):
        if not args.overwrite and is_done(run, out_root, args.method):
            n_skip += 1
            if not args.quiet:
                print(f"skip {run.stem}: already done", file=sys.stderr)
            continue
        try:
            inputs = load_phase_inputs(run.phase, run.magnitude or None, None, te_s=args.te, b0_t=args.b0,
                                       phase_units=args.phase_units)
            with TqdmProgress(run.stem, disable=args.quiet) as prog:
                res, total, _, info = process(inputs, args.method, args.device, args.unwrapper, args.phase_sign,
                                              args.offset, args.mask_method, args.mask_erode_mm, dict(args.param),
                                              prog)
                prog(1.0, "writing")
            meta = provenance(inputs, res, info, {"unwrapper": args.unwrapper, "offset": args.offset,
                                                  "phase_sign": args.phase_sign, "mask_method": args.mask_method})
            meta["Sources"] = [str(p.relative_to(bids_dir)) for p in run.phase + run.magnitude]
            write_outputs(run.out_paths(out_root), res, total, inputs, meta)
            n_done += 1
        except QSMInputError as exc:
            n_fail += 1
            print(f"nextqsm bids: {run.stem}: {exc}", file=sys.stderr)
    if not args.quiet:
        print(f"nextqsm bids: {n_done} processed, {n_skip} skipped (done), {n_fail} failed; "
              f"outputs in {out_root / 'nextqsm'}", file=sys.stderr)
    return 1 if n_fail else 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``bids`` subcommand (sets ``func`` returning an exit code)."""
    from .cli_pipeline import add_processing_args

    p = subparsers.add_parser("bids", help="QSM for every multi-echo GRE run of a BIDS dataset (BIDS derivatives)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bids_dir", metavar="BIDS_DIR", help="root of the BIDS dataset")
    p.add_argument("out_dir", metavar="OUT_DIR", help="derivatives root; outputs go to OUT_DIR/nextqsm/")
    p.add_argument("--participant-label", nargs="+", metavar="LABEL",
                   help="only these participants (with or without 'sub-')")
    p.add_argument("--te", nargs="+", type=float, metavar="TE",
                   help="echo times in s, overriding the sidecars' EchoTime (values > 1 are read as ms)")
    p.add_argument("--b0", type=float, help="field strength in T, overriding the sidecars' MagneticFieldStrength")
    p.add_argument("--overwrite", action="store_true", help="redo runs that are already done")
    add_processing_args(p)
    p.set_defaults(func=run_bids)
    return p
