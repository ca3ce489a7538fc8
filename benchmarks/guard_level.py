#!/usr/bin/env python
"""Rule 21 guards, NeXtQSM only: (d) held-out heads 13-16 at 64^3 from the total field (as bench_nextqsm.py builds
them), default pipeline, B0 along z: NRMSE % and raw XSIM per weights folder; (e) the same with Gaussian noise of
variance 0.005 relative to the unit-variance total field (one draw per head, seed = head, shared by all folders);
(c) the 2016 challenge local field, default local path (VN + TV refinement), against COSMOS. The classical references' figures are
unchanged from results_nextqsm.md; a calibrated level moves chi by a constant inside the mask (NRMSE removes it).

    .venv/bin/python benchmarks/guard_level.py shipped=NeXtQSM/nextqsm/models/weights cand=DIR
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "NeXtQSM"), str(HERE.parent / "NeXtQSMTraining")]


def main(argv=None) -> int:
    from nextqsm.metrics import nrmse, xsim
    from nextqsm.pipeline import QSMInput, run
    from nextqsm_training.heads import HELD_OUT, realistic_head

    from dataclasses import replace

    import numpy as np

    ws = dict(a.split("=", 1) for a in (argv if argv is not None else sys.argv[1:]))
    for i in HELD_OUT:
        h = realistic_head(i, size=64, voxel_size=None)
        m = h["mask"] > 0
        inp = QSMInput(field=h["total_field"], mask=m, kind="total", voxel_size=tuple(map(float, h["voxel_size"])),
                       b0_dir=tuple(map(float, h["b0_dir"])))
        for n, w in ws.items():
            chi = run("nextqsm", inp, weights_dir=w).chi
            print(f"head {i} {n:>8}: NRMSE {nrmse(chi, h['chi'], m):.2f} XSIM {xsim(chi, h['chi'], m):.4f} "
                  f"offset {(chi - h['chi'])[m].mean():+.4f}", flush=True)
        sd = np.sqrt(0.005) * h["total_field"][m].std()
        noisy = h["total_field"] + np.random.default_rng(i).normal(0.0, sd, m.shape) * m
        for n, w in ws.items():
            chi = run("nextqsm", replace(inp, field=noisy), weights_dir=w).chi
            print(f"head {i} {n:>8} + noise: NRMSE {nrmse(chi, h['chi'], m):.2f} XSIM {xsim(chi, h['chi'], m):.4f}",
                  flush=True)
    from diag_challenge import DATA, VOXEL

    from nextqsm.io import load_nifti

    lf = load_nifti(DATA / "phs_tissue.nii.gz").data.astype(np.float64)
    m = load_nifti(DATA / "msk.nii.gz").data > 0
    cos = load_nifti(DATA / "chi_cosmos.nii.gz").data.astype(np.float64)
    for n, w in ws.items():
        chi = run("nextqsm", QSMInput(field=lf, mask=m, kind="local", voxel_size=VOXEL), weights_dir=w).chi
        print(f"challenge {n:>8}: NRMSE {nrmse(chi, cos, m):.2f} XSIM {xsim(chi, cos, m):.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
