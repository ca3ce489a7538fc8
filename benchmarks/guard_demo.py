#!/usr/bin/env python
"""NeXtQSM on the demo's procedural phantom (``nextqsm.phantom.make_phantom``, not SynthSeg: another head family
than the generator's), total field in, default pipeline, per weights folder and phantom seed: demeaned NRMSE %,
XSIM and the deep-grey NRMSE (challenge metrics, scored in the result's mask as ``nextqsm demo`` does).

    .venv/bin/python benchmarks/guard_demo.py A=DIR B=DIR [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "NeXtQSM"), str(HERE.parent / "NeXtQSMTraining")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", nargs="+", metavar="NAME=DIR")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--local", action="store_true",
                    help="also give each VN the phantom's TRUE local field (the --input local path, no refinement)")
    a = ap.parse_args(argv)
    import numpy as np

    from nextqsm.demo import DEMO_SHAPE, DEMO_VOXEL
    from nextqsm.metrics import challenge_metrics
    from nextqsm.phantom import make_phantom
    from nextqsm.pipeline import QSMInput, run

    ws = dict(w.split("=", 1) for w in a.weights)
    res: dict = {n: [] for n in ws}
    for seed in a.seeds:
        ph = make_phantom(shape=DEMO_SHAPE, voxel_size=DEMO_VOXEL, seed=seed)
        inp = QSMInput(field=ph.total_field, mask=ph.mask, voxel_size=ph.voxel_size, b0_dir=ph.b0_dir, kind="total")
        for n, w in ws.items():
            r = run("nextqsm", inp, weights_dir=w)
            m = challenge_metrics(r.chi, ph.chi, r.mask, ph.seg)
            res[n].append(m)
            if a.local:
                loc = run("nextqsm", QSMInput(field=ph.local_field, mask=ph.mask, voxel_size=ph.voxel_size,
                                              b0_dir=ph.b0_dir, kind="local"), weights_dir=w, refine=False)
                ml = challenge_metrics(loc.chi, ph.chi, loc.mask, ph.seg)
                print(f"seed {seed} {n:>6}: true local field, VN + consistency step: NRMSE {ml['nrmse']:.1f} "
                      f"XSIM {ml['xsim']:.3f}", flush=True)
            print(f"seed {seed} {n:>6}: NRMSE {m['nrmse']:.1f} XSIM {m['xsim']:.3f} deep grey NRMSE {m['nrmse_dgm']:.1f} "
                  f"(level path {r.params.get('level_path')}, level {r.params.get('level', 0):.3f})", flush=True)
    for n, ms in res.items():
        print(f"{n}: mean NRMSE {np.mean([m['nrmse'] for m in ms]):.2f}, XSIM {np.mean([m['xsim'] for m in ms]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
