#!/usr/bin/env python
"""Model selection on TRAINING heads only: is a candidate VN better than the shipped one?

The selection set of rules 14-19 (``results_nextqsm.md``): SynthSeg training maps 1-4 (never the held-out 13-16),
1 mm isotropic 160^3 (``realistic_head(i, size=160, voxel_size=1)``), total field, the default pipeline (LBV + VN +
refinement), B0 along z and tilted 25 degrees towards j: 8 cases. Reports per case NRMSE %, XSIM and chi's offset
(mean over the mask of chi_hat - chi, ppm), and per weights folder the means. Several folders in one call share the
heads (built once). Writes a JSON file and prints a markdown table::

    .venv/bin/python benchmarks/select_vn.py shipped=NeXtQSM/nextqsm/models/weights cand=DIR [--out sel.json]

An optional ``--blur S [S ...]`` adds the VN alone (``--input local`` reading: true local field, no refinement, with
its consistency step) on the same maps along z with chi blurred inside the mask by S voxels
(``susceptibility.partial_volume``), the partial-volume check of rule 19.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "NeXtQSM"), str(HERE.parent / "NeXtQSMTraining")]
MAPS = (1, 2, 3, 4)
TILTS = (0.0, 25.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", nargs="+", metavar="NAME=DIR", help="weights folders to compare")
    ap.add_argument("--maps", type=int, nargs="+", default=list(MAPS))
    ap.add_argument("--blur", type=float, nargs="*", default=[], help="also score the VN alone on blurred chi")
    ap.add_argument("--no-total", action="store_true", help="skip the total-field cases")
    ap.add_argument("--out", default=None, help="JSON results (default: print only)")
    a = ap.parse_args(argv)
    from bench_nextqsm import tilted_b0
    from diag_partial_volume import blurred_case

    from nextqsm.io import write_text_atomic
    from nextqsm.metrics import nrmse, xsim
    from nextqsm.pipeline import QSMInput, run
    from nextqsm_training.heads import HELD_OUT, realistic_head

    ws = dict(w.split("=", 1) for w in a.weights)
    if set(a.maps) & set(HELD_OUT):
        raise SystemExit(f"maps {sorted(set(a.maps) & set(HELD_OUT))} are held out: select on training maps only")
    res: dict = {n: {"cases": []} for n in ws}
    t0 = time.perf_counter()
    for i in a.maps:
        for tilt in (() if a.no_total else TILTS):
            h = realistic_head(i, size=160, voxel_size=(1.0, 1.0, 1.0), b0_dir=tilted_b0(tilt))
            m = h["mask"] > 0
            inp = QSMInput(field=h["total_field"], mask=m, kind="total", voxel_size=tuple(map(float, h["voxel_size"])),
                           b0_dir=tuple(map(float, h["b0_dir"])))
            for n, w in ws.items():
                chi = run("nextqsm", inp, weights_dir=w).chi
                c = {"map": i, "tilt": tilt, "kind": "total", "nrmse": float(nrmse(chi, h["chi"], m)),
                     "xsim": float(xsim(chi, h["chi"], m)), "offset": float((chi - h["chi"])[m].mean())}
                res[n]["cases"].append(c)
                print(f"{n:>10} map {i} tilt {tilt:4.1f}: NRMSE {c['nrmse']:.2f} XSIM {c['xsim']:.4f} "
                      f"offset {c['offset']:+.4f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
        if a.blur:
            h = realistic_head(i, size=160, voxel_size=(1.0, 1.0, 1.0))
            m = h["mask"] > 0
            v = tuple(map(float, h["voxel_size"]))
            for s in a.blur:
                truth, f = blurred_case(h, s)
                inp = QSMInput(field=f, mask=m, kind="local", voxel_size=v, b0_dir=(0.0, 0.0, 1.0))
                for n, w in ws.items():
                    chi = run("nextqsm", inp, weights_dir=w, refine=False).chi
                    c = {"map": i, "sigma": s, "kind": "blur", "nrmse": float(nrmse(chi, truth, m)),
                         "xsim": float(xsim(chi, truth, m))}
                    res[n]["cases"].append(c)
                    print(f"{n:>10} map {i} blur {s}: NRMSE {c['nrmse']:.2f} XSIM {c['xsim']:.4f}", flush=True)
    print("\n| weights | mean NRMSE % (total) | along z | tilted 25 | mean XSIM z / tilted | offset range, ppm "
          "| blurred chi, VN alone: mean NRMSE % / XSIM |")
    print("|---|---|---|---|---|---|---|")
    for n, r in res.items():
        tot = [c for c in r["cases"] if c["kind"] == "total"]
        bl = [c for c in r["cases"] if c["kind"] == "blur"]
        z = [c for c in tot if c["tilt"] == 0.0]
        t = [c for c in tot if c["tilt"] != 0.0]
        mean = lambda cs, k: float(np.mean([c[k] for c in cs])) if cs else float("nan")  # noqa: E731
        r["summary"] = {"nrmse": mean(tot, "nrmse"), "nrmse_z": mean(z, "nrmse"), "nrmse_tilt": mean(t, "nrmse"),
                        "xsim_z": mean(z, "xsim"), "xsim_tilt": mean(t, "xsim"),
                        "blur_nrmse": mean(bl, "nrmse"), "blur_xsim": mean(bl, "xsim")}
        s = r["summary"]
        off = [c["offset"] for c in tot]
        print(f"| {n} | {s['nrmse']:.2f} | {s['nrmse_z']:.2f} | {s['nrmse_tilt']:.2f} | {s['xsim_z']:.4f} / "
              f"{s['xsim_tilt']:.4f} | {min(off, default=float('nan')):+.4f} to {max(off, default=float('nan')):+.4f} "
              f"| {s['blur_nrmse']:.2f} / {s['blur_xsim']:.4f} |")
    if a.out:
        out = Path(a.out)
        write_text_atomic(out, json.dumps({"argv": sys.argv[1:], "weights": ws, "results": res}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
