#!/usr/bin/env python
"""Is the VN's low deep grey-matter contrast on the 2016 challenge (bench_challenge_roi.py: ROI-mean slope
0.71-0.79 vs COSMOS) already there on simulated heads? ROI means of each method against the true chi on
SynthSeg *training* maps (no held-out head is used), local field in as on the challenge.

Per head: the FreeSurfer labels caudate, putamen, pallidum, thalamus, ventral DC (holds the substantia nigra
and red nucleus), cerebral white matter and cortex (left and right pooled); every map referenced to its own
mean in the mask; slope / intercept of method = a x truth + b through the ROI means, and the deep grey
nuclei's mean absolute error (ppb).

    nice -n 10 .venv/bin/python benchmarks/diag_roi_bias.py     # -> benchmarks/results_diag_roi_bias.md
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ROIS = {"caudate": (11, 50), "putamen": (12, 51), "pallidum": (13, 52), "thalamus": (10, 49), "ventral DC": (28, 60),
        "cerebral WM": (2, 41), "cortex": (3, 42)}
DGM = ("caudate", "putamen", "pallidum", "thalamus", "ventral DC")
METHODS = {"VN alone (dc_mu=0)": ("nextqsm", {"refine": False, "dc_mu": 0.0}),
           "VN + consistency step": ("nextqsm", {"refine": False}),
           "nextqsm default (VN + TV refinement)": ("nextqsm", {}),
           "TV (lbv-tv)": ("lbv-tv", {}), "iLSQR": ("vsharp-ilsqr", {}), "TKD": ("tkd", {})}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--maps", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--voxel", type=float, default=1.0)
    ap.add_argument("--blur", type=float, default=0.0, help="partial-volume blur of chi, voxels (diag_partial_volume)")
    ap.add_argument("--smooth-noise", type=float, default=0.0,
                    help="add this x RMS(local field) of Gaussian noise smoothed over 1.5 voxels (a stand-in for real "
                         "fields' smooth departure from the dipole model), seeded")
    ap.add_argument("--weights-dir", default=None, help="NeXtQSM weights folder (default: shipped)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), help="names of METHODS to run")
    ap.add_argument("--out", default=str(HERE / "results_diag_roi_bias.md"))
    a = ap.parse_args(argv)
    sys.path[:0] = [str(REPO / "NeXtQSM"), str(REPO / "NeXtQSMTraining"), str(HERE)]
    import torch

    from nextqsm.io import write_text_atomic
    from nextqsm.metrics import nrmse, referenced
    from nextqsm.pipeline import QSMInput, run
    from diag_partial_volume import blurred_case
    from nextqsm_training.heads import HELD_OUT, realistic_head

    torch.set_num_threads(2)
    assert not set(a.maps) & set(HELD_OUT), "training maps only"
    rows, res = [], {}
    for i in a.maps:
        h = realistic_head(i, size=a.size, voxel_size=(a.voxel,) * 3)
        m = h["mask"] > 0
        lab = h["labels"]
        sel = {r: m & np.isin(lab, codes) for r, codes in ROIS.items()}
        chi_t, field = (h["chi"], h["local_field"]) if a.blur <= 0 else blurred_case(h, a.blur)
        if a.smooth_noise > 0:
            from scipy.ndimage import gaussian_filter

            n = gaussian_filter(np.random.default_rng(i).standard_normal(field.shape), 1.5)
            rms = float(np.sqrt(np.mean(field[m] ** 2)))
            field = ((field + a.smooth_noise * rms * n / n[m].std()) * m).astype(np.float32)
        truth = referenced(chi_t, m)
        t_means = np.array([truth[s].mean() for s in sel.values()])
        inp = QSMInput(field=field, mask=m, kind="local", voxel_size=tuple(float(v) for v in h["voxel_size"]),
                       b0_dir=tuple(float(v) for v in h["b0_dir"]))
        res[i] = {"truth_ppb": dict(zip(ROIS, np.round(1e3 * t_means, 1).tolist()))}
        for name in a.methods:
            method, kw = METHODS[name]
            if method == "nextqsm" and a.weights_dir:
                kw = {**kw, "weights_dir": a.weights_dir}
            t = time.perf_counter()
            chi = referenced(run(method, inp, **kw).chi, m)
            x = np.array([chi[s].mean() for s in sel.values()])
            dgm = np.isin(list(ROIS), DGM)
            slope, icpt = np.polyfit(t_means, x, 1)
            r = {"slope": float(slope), "intercept_ppb": 1e3 * float(icpt),
                 "mae_dgm_ppb": 1e3 * float(np.abs(x - t_means)[dgm].mean()), "nrmse": nrmse(chi, truth, m),
                 "roi_ppb": dict(zip(ROIS, np.round(1e3 * x, 1).tolist())), "seconds": round(time.perf_counter() - t, 1)}
            res[i][name] = r
            rows.append(f"| {i} | {name} | {r['slope']:.3f} | {r['intercept_ppb']:+.1f} | {r['mae_dgm_ppb']:.1f} | "
                        f"{r['nrmse']:.1f} | " + " / ".join(f"{v:.0f}" for v in r["roi_ppb"].values()) + " |")
            print(rows[-1], flush=True)
    L = ["# ROI-mean bias on simulated heads (training maps; local field in)", "",
         f"`python benchmarks/diag_roi_bias.py {' '.join(sys.argv[1:] if argv is None else argv)}` "
         f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, weights {a.weights_dir or 'shipped'}, CPU, 2 threads). Truth ROI means (ppb, "
         + "; ".join(f"map {i}: " + " / ".join(f"{v:.0f}" for v in res[i]['truth_ppb'].values()) for i in a.maps)
         + f") in the order {' / '.join(ROIS)}.", "",
         "| map | method | slope | intercept ppb | MAE DGM ppb | NRMSE % | ROI means ppb |", "|---|---|---|---|---|---|---|", *rows]
    out = Path(a.out)
    write_text_atomic(out, "\n".join(L) + "\n")
    write_text_atomic(out.with_suffix(".json"), json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
