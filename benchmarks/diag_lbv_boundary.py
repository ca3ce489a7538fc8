#!/usr/bin/env python
"""LBV's boundary before the VN at 1 mm, B0 along z and tilted 25 degrees, on TRAINING maps 1-4 (160^3, 1 mm).

Variants of ``nextqsm.methods.lbv.lbv`` inside the default NeXtQSM pipeline (``bfr='lbv'``, shipped weights; chi
scored on the whole brain mask): A = the pipeline's (6-neighbour interior, peel 1); B = ``corner_boundary=True``
(26-neighbour interior: voxels touching the outside by an edge or a corner are boundary), peel 1; C = peel 2;
D = ``corner_boundary=True``, peel 0.
Writes ``benchmarks/results_diag_lbv_boundary.md``. Why B: the pure background's discrete Laplacian is large on
exactly those voxels (results_diag_tilt.md). Selection rule fixed beforehand (session 12): adopt the variant with the
lowest mean NRMSE if it beats A by >= 1 point, is not worse along z by > 0.3 and loses <= 0.01 mean XSIM (z and
tilted separately).

    .venv/bin/python benchmarks/diag_lbv_boundary.py [--maps 1 2 3 4]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
VARIANTS = {"A": {}, "B": {"corner_boundary": True}, "C": {"peel": 2}, "D": {"corner_boundary": True, "peel": 0}}


def main() -> None:
    import nextqsm.methods.lbv as lbv_mod
    from nextqsm.metrics import nrmse, xsim
    from nextqsm.pipeline import QSMInput, run
    from nextqsm_training.heads import realistic_head

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--maps", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--out", default=str(HERE / "results_diag_lbv_boundary.md"))
    a = ap.parse_args()
    orig = lbv_mod.lbv
    t = np.deg2rad(25)
    rows = []
    try:
        for i in a.maps:
            for tag, b0 in (("z", (0.0, 0.0, 1.0)), ("tilted", (0.0, float(np.sin(t)), float(np.cos(t))))):
                h = realistic_head(i, size=160, voxel_size=(1.0, 1.0, 1.0), b0_dir=b0)
                m = h["mask"] > 0
                for v, kw in VARIANTS.items():
                    lbv_mod.lbv = lambda *args, _kw=kw, **k: orig(*args, **{**k, **_kw})   # the pipeline's call
                    r = run("nextqsm", QSMInput(field=h["total_field"], mask=m, kind="total",
                                                voxel_size=(1.0, 1.0, 1.0), b0_dir=b0), bfr="lbv")
                    rows.append({"map": i, "b0": tag, "v": v, "nrmse": nrmse(r.chi, h["chi"], m),
                                 "xsim": xsim(r.chi, h["chi"], m)})
                    print(rows[-1], flush=True)
    finally:
        lbv_mod.lbv = orig
    L = ["# LBV's boundary before the VN at 1 mm (training maps)", "",
         f"Command: `.venv/bin/python benchmarks/diag_lbv_boundary.py --maps {' '.join(map(str, a.maps))}` "
         f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); SynthSeg TRAINING maps, 160^3, 1 mm, the shipped "
         "weights, default pipeline with `bfr='lbv'`; chi NRMSE % / XSIM on the whole brain mask.", "",
         "A: the pipeline's LBV (6-neighbour interior, peel 1). B: `corner_boundary=True` (26-neighbour interior), "
         "peel 1. C: peel 2. D: `corner_boundary=True`, peel 0.", "",
         "| map | B0 | A | B | C | D |", "|---|---|---|---|---|---|"]
    for i in a.maps:
        for tag in ("z", "tilted"):
            cell = {r["v"]: r for r in rows if r["map"] == i and r["b0"] == tag}
            L.append(f"| {i} | {tag} | " + " | ".join(f"{cell[v]['nrmse']:.1f} / {cell[v]['xsim']:.3f}" for v in VARIANTS) + " |")
    L += ["", "| variant | mean NRMSE % | along z | tilted | mean XSIM along z | tilted |", "|---|---|---|---|---|---|"]
    for v in VARIANTS:
        r = [x for x in rows if x["v"] == v]
        z = [x for x in r if x["b0"] == "z"]
        tl = [x for x in r if x["b0"] == "tilted"]
        L.append(f"| {v} | {np.mean([x['nrmse'] for x in r]):.2f} | {np.mean([x['nrmse'] for x in z]):.2f} | "
                 f"{np.mean([x['nrmse'] for x in tl]):.2f} | {np.mean([x['xsim'] for x in z]):.4f} | "
                 f"{np.mean([x['xsim'] for x in tl]):.4f} |")
    L += ["", "Session 12 decisions (rules fixed before each run; D was added after A-C were seen): B and D have the "
          "lowest mean NRMSE and are better along z, but their tilted mean XSIM is more than 0.01 below A's, so the "
          "pipeline keeps A; `lbv(corner_boundary=True)` is available as an option of the function."]
    Path(a.out).write_text("\n".join(L) + "\n")
    print("\n".join(L))


if __name__ == "__main__":
    main()
