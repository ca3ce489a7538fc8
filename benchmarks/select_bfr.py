#!/usr/bin/env python
"""Which background removal should NeXtQSM's default use at coarser voxels: V-SHARP or LBV (peel 1)?

Training maps only (SynthSeg 1-4; never the held-out 13-16): ``realistic_head(i, size, voxel_size)`` at 1.5 mm
(128^3), 2 mm (96^3) and with the brain fitted into 64^3 (~2.5-3.3 mm, as the held-out benchmark), B0 along k and
tilted 25 degrees towards j, total field, the default pipeline with ``bfr`` forced to each choice. Prints per case
NRMSE %, raw XSIM and chi's offset, and per voxel class the means; writes JSON with ``--out``::

    .venv/bin/python benchmarks/select_bfr.py [--weights-dir W] [--out sel.json]
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
CLASSES = {"1.5": (128, 1.5), "2.0": (96, 2.0), "fit64": (64, None)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights-dir", default=None)
    ap.add_argument("--maps", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from bench_nextqsm import tilted_b0

    from nextqsm.metrics import nrmse, xsim
    from nextqsm.pipeline import QSMInput, run
    from nextqsm_training.heads import HELD_OUT, realistic_head

    if set(a.maps) & set(HELD_OUT):
        raise SystemExit("select on training maps only")
    cases = []
    t0 = time.perf_counter()
    for cls, (size, vox) in CLASSES.items():
        for i in a.maps:
            for tilt in (0.0, 25.0):
                h = realistic_head(i, size=size, voxel_size=None if vox is None else (vox,) * 3, b0_dir=tilted_b0(tilt))
                m = h["mask"] > 0
                inp = QSMInput(field=h["total_field"], mask=m, kind="total",
                               voxel_size=tuple(map(float, h["voxel_size"])), b0_dir=tuple(map(float, h["b0_dir"])))
                for bfr in ("vsharp", "lbv"):
                    chi = run("nextqsm", inp, weights_dir=a.weights_dir, bfr=bfr).chi
                    c = {"class": cls, "map": i, "tilt": tilt, "bfr": bfr, "voxel_mm": float(h["voxel_size"][0]),
                         "nrmse": float(nrmse(chi, h["chi"], m)), "xsim": float(xsim(chi, h["chi"], m)),
                         "offset": float((chi - h["chi"])[m].mean())}
                    cases.append(c)
                    print(f"{cls:>5} map {i} tilt {tilt:4.1f} {bfr:>6}: NRMSE {c['nrmse']:.2f} XSIM {c['xsim']:.4f} "
                          f"offset {c['offset']:+.4f} ({c['voxel_mm']:.2f} mm, {time.perf_counter() - t0:.0f} s)", flush=True)
    print("\n| voxels | bfr | mean NRMSE % | along z / tilted | mean XSIM z / tilted |\n|---|---|---|---|---|")
    for cls in CLASSES:
        for bfr in ("vsharp", "lbv"):
            cs = [c for c in cases if c["class"] == cls and c["bfr"] == bfr]
            z = [c for c in cs if c["tilt"] == 0.0]
            t = [c for c in cs if c["tilt"] != 0.0]
            mn = lambda xs, k: float(np.mean([c[k] for c in xs]))
            print(f"| {cls} | {bfr} | {mn(cs, 'nrmse'):.2f} | {mn(z, 'nrmse'):.2f} / {mn(t, 'nrmse'):.2f} | "
                  f"{mn(z, 'xsim'):.4f} / {mn(t, 'xsim'):.4f} |")
    if a.out:
        Path(a.out).write_text(json.dumps({"cases": cases}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
