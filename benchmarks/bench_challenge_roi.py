#!/usr/bin/env python
"""Deep grey-matter quantification on the 2016 QSM challenge: ROI means of each method vs COSMOS and chi_33.

Whole-brain NRMSE rewards smooth maps; what a clinician reads off a QSM map is the mean susceptibility of a
structure (iron in the pallidum, putamen, caudate, substantia nigra, red and dentate nuclei). The challenge's
own evaluation mask (``evaluation_mask.nii.gz``: labels 1-6 deep grey nuclei, 7-11 white matter; names
inferred, see ``../shared/data/qsm2016_challenge/PROVENANCE.md``) gives those ROIs. Every map, the references
included, is referenced to its own mean inside ``msk`` (chi has an arbitrary constant). Per method: the ROI
means (ppb), their mean absolute error against the reference (deep grey nuclei and all 11 ROIs), the slope
and intercept of the least-squares line method = a x reference + b through the 11 ROI means (1 = no
under- or over-estimation of contrast), and the whole-mask NRMSE for context.

    nice -n 10 .venv/bin/python benchmarks/bench_challenge_roi.py      # -> benchmarks/results_challenge_roi.md/.json
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO.parent / "shared" / "data" / "qsm2016_challenge"
DGM = (1, 2, 3, 4, 5, 6)
#: name -> (pipeline method, parameters); every run gets the challenge's local field (``--input local``)
METHODS: dict[str, tuple[str, dict]] = {
    "nextqsm (default: VN + TV refinement)": ("nextqsm", {}),
    "nextqsm VN + consistency step (refine=false)": ("nextqsm", {"refine": False}),
    "nextqsm VN alone (refine=false, dc_mu=0)": ("nextqsm", {"refine": False, "dc_mu": 0.0}),
    "unet-baseline": ("unet-baseline", {}),
    "iLSQR (vsharp-ilsqr, local field)": ("vsharp-ilsqr", {}),
    "TV (lbv-tv, local field)": ("lbv-tv", {}),
    "TKD": ("tkd", {}),
}


def roi_table(chi: np.ndarray, seg: np.ndarray, labels: list[int]) -> np.ndarray:
    """Mean of ``chi`` (ppm) in each label."""
    return np.array([float(chi[seg == lab].mean()) for lab in labels])


def agreement(x: np.ndarray, ref: np.ndarray, labels: list[int]) -> dict:
    """ROI-mean agreement of ``x`` with ``ref`` (both ppm, one value per label)."""
    dgm = np.isin(labels, DGM)
    slope, icpt = np.polyfit(ref, x, 1)
    return {"mae_dgm_ppb": 1e3 * float(np.abs(x - ref)[dgm].mean()), "mae_all_ppb": 1e3 * float(np.abs(x - ref).mean()),
            "slope": float(slope), "intercept_ppb": 1e3 * float(icpt), "r": float(np.corrcoef(ref, x)[0, 1])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "results_challenge_roi.md"))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), help="names of METHODS to run")
    ap.add_argument("--weights-dir", default=None, help="weights folder for nextqsm and unet-baseline (default: shipped)")
    a = ap.parse_args(argv)
    sys.path[:0] = [str(REPO / "NeXtQSM"), str(REPO / "NeXtQSMTraining")]
    import torch

    from nextqsm.io import load_nifti, write_text_atomic
    from nextqsm.metrics import nrmse, referenced
    from nextqsm.pipeline import QSMInput, run

    torch.set_num_threads(2)
    acq = json.loads((DATA / "acquisition.json").read_text())
    lf = load_nifti(DATA / "phs_tissue.nii.gz").data
    mask = load_nifti(DATA / "msk.nii.gz").data > 0
    seg = np.rint(load_nifti(DATA / "evaluation_mask.nii.gz").data).astype(np.int32) * mask
    with open(DATA / "evaluation_mask_labels.csv", newline="") as fh:
        names = {int(r["label"]): r["tentative_name"] for r in csv.DictReader(fh)}
    labels = sorted(int(v) for v in np.unique(seg) if v)
    refs = {r: referenced(load_nifti(DATA / f"chi_{r}.nii.gz").data, mask) for r in ("cosmos", "33")}
    inp = QSMInput(field=lf, mask=mask, kind="local", voxel_size=tuple(acq["voxel_size_mm_from_spatial_res_mat"]),
                   b0_dir=tuple(float(v) for v in acq["B0_direction_in_array_axes"]))
    means = {f"chi_{r} (reference)": roi_table(x, seg, labels) for r, x in refs.items()}
    res: dict = {"labels": {lab: names.get(lab, "") for lab in labels}, "methods": {}}
    for name in a.methods:
        method, kw = METHODS[name]
        if a.weights_dir and method in ("nextqsm", "unet-baseline"):
            kw = {**kw, "weights_dir": a.weights_dir}
        t = time.perf_counter()
        out = run(method, inp, **kw)
        chi = referenced(out.chi, mask)
        means[name] = roi_table(chi, seg, labels)
        res["methods"][name] = {"seconds": round(time.perf_counter() - t, 1), "params": {k: v for k, v in out.params.items()
                                                                                          if k in ("tta", "dc_mu", "refine")},
                                **{f"vs_{r}": {"nrmse": nrmse(chi, ref, mask), **agreement(means[name], roi_table(ref, seg, labels), labels)}
                                   for r, ref in refs.items()}}
        print(name, json.dumps(res["methods"][name]), flush=True)
    res["methods"]["chi_33 (vs COSMOS)"] = {"vs_cosmos": {"nrmse": nrmse(refs["33"], refs["cosmos"], mask),
                                                          **agreement(means["chi_33 (reference)"], means["chi_cosmos (reference)"], labels)}}
    res["roi_means_ppb"] = {k: [round(1e3 * float(v), 1) for v in m] for k, m in means.items()}

    L = ["# 2016 QSM challenge: deep grey-matter ROI means", "",
         f"`python benchmarks/bench_challenge_roi.py {' '.join(sys.argv[1:] if argv is None else argv)}` "
         f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, weights {a.weights_dir or 'shipped'}, "
         "CPU, 2 threads; the challenge's local field `phs_tissue` in, `msk` as mask; every map referenced to its own "
         "mean in `msk`). ROIs: the challenge's `evaluation_mask` (names inferred, PROVENANCE.md).", "",
         "## Agreement of ROI means with COSMOS (and chi_33)", "",
         "MAE: mean |method - reference| of the ROI means, ppb (deep grey nuclei 1-6 / all 11 ROIs); slope and intercept: "
         "least-squares line method = a x reference + b through the 11 ROI means; NRMSE: whole mask.", "",
         "| method | MAE DGM ppb | MAE all ppb | slope | intercept ppb | r | NRMSE % | vs chi_33: MAE DGM / slope / NRMSE % |",
         "|---|---|---|---|---|---|---|---|"]
    for name, r in res["methods"].items():
        c = r["vs_cosmos"]
        t = r.get("vs_33")
        L.append(f"| {name} | {c['mae_dgm_ppb']:.1f} | {c['mae_all_ppb']:.1f} | {c['slope']:.2f} | {c['intercept_ppb']:+.1f} | "
                 f"{c['r']:.3f} | {c['nrmse']:.1f} | " + (f"{t['mae_dgm_ppb']:.1f} / {t['slope']:.2f} / {t['nrmse']:.1f}" if t else "-")
                 + " |")
    L += ["", "## ROI means (ppb)", "", "| ROI | " + " | ".join(means) + " |", "|---|" + "---|" * len(means)]
    for i, lab in enumerate(labels):
        L.append(f"| {lab} {names.get(lab, '')} | " + " | ".join(f"{1e3 * m[i]:.1f}" for m in means.values()) + " |")
    out = Path(a.out)
    write_text_atomic(out, "\n".join(L) + "\n")
    write_text_atomic(out.with_suffix(".json"), json.dumps(res, indent=1) + "\n")
    print("\n".join(L))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
