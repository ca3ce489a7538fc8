#!/usr/bin/env python
"""NeXtQSM's default pipeline on held-out heads at clinical resolution (160^3 at 1 mm, 1x1x2 mm; B0 axial and
tilted 25 degrees), the conditions of ``bench_classical.py --oblique`` whose classical figures it sits next to.

Runs ``run('nextqsm', inp)`` with the shipped weights and defaults (whatever background removal and test-time flips
the manifest chooses for the voxel size and device) and scores chi on the whole brain mask: NRMSE %, XSIM. Writes
``benchmarks/results_nextqsm_1mm.md`` (and ``.json``).

    .venv/bin/python benchmarks/bench_nextqsm_1mm.py [--param tta=1]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "NeXtQSM"), str(HERE.parent / "NeXtQSMTraining")]
TILT = 25.0
CONDITIONS = (("head 13, axial, 1 mm", dict(index=13)), ("head 14, axial, 1 mm", dict(index=14)),
              ("head 13, B0 tilted 25 degrees, 1 mm", dict(index=13, tilt=TILT)),
              ("head 13, axial, 1x1x2 mm", dict(index=13, voxel_size=(1.0, 1.0, 2.0))),
              ("head 13, B0 tilted 25 degrees, 1x1x2 mm", dict(index=13, tilt=TILT, voxel_size=(1.0, 1.0, 2.0))))


def main(argv=None) -> int:
    from nextqsm.cli import _parse_param
    from nextqsm.io import write_text_atomic
    from nextqsm.metrics import nrmse, xsim
    from nextqsm.pipeline import QSMInput, run
    from nextqsm_training.heads import realistic_head, tilted_b0

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="extra nextqsm parameter")
    ap.add_argument("--out", default=str(HERE / "results_nextqsm_1mm.md"))
    a = ap.parse_args(argv)
    params = dict(_parse_param(p) for p in a.param)
    rows = []
    for title, kw in CONDITIONS:
        h = realistic_head(kw["index"], size=160, voxel_size=kw.get("voxel_size", (1.0, 1.0, 1.0)),
                           b0_dir=tilted_b0(kw.get("tilt", 0.0)))
        m = h["mask"] > 0
        inp = QSMInput(field=h["total_field"], mask=m, kind="total", voxel_size=tuple(map(float, h["voxel_size"])),
                       b0_dir=tuple(map(float, h["b0_dir"])), device="cpu")
        t0 = time.perf_counter()
        r = run("nextqsm", inp, **params)
        rows.append({"condition": title, "nrmse": nrmse(r.chi, h["chi"], m), "xsim": xsim(r.chi, h["chi"], m),
                     "seconds": time.perf_counter() - t0, "bfr": r.params.get("bfr"), "tta": r.params.get("tta")})
        print(json.dumps(rows[-1]), flush=True)
    L = ["# NeXtQSM at clinical resolution: held-out heads, 160^3", "",
         f"Command: `.venv/bin/python benchmarks/bench_nextqsm_1mm.py{''.join(' --param ' + p for p in a.param)}` "
         f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; 2 CPU cores, shipped weights and defaults). "
         "chi NRMSE % and XSIM on the whole brain mask (the truth is CSF-referenced; NRMSE removes the means). The "
         "classical references on the same heads: benchmarks/results_classical.md.", "",
         "| condition | NRMSE % | XSIM | background removal | flips | seconds |", "|---|---|---|---|---|---|"]
    L += [f"| {r['condition']} | {r['nrmse']:.1f} | {r['xsim']:.3f} | {r['bfr']} | {r['tta']} | {r['seconds']:.1f} |"
          for r in rows]
    write_text_atomic(Path(a.out), "\n".join(L) + "\n")
    write_text_atomic(Path(a.out).with_suffix(".json"), json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
