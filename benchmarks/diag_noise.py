#!/usr/bin/env python
"""How hard the noise experiment is: the noise against the local field, and what TV at its best weight does.

The noise experiment (benchmarks/bench_nextqsm.py, the paper's: Gaussian noise of variance 0.005 relative to the
unit-variance-normalised total field) adds noise of std sqrt(0.005) x std(total field in the mask). The total field
is dominated by the background, so this noise is as large as the local field itself. On held-out heads (64^3, the
same noise draws as bench_nextqsm: numpy default_rng(0), total-field draw first) this script writes
``benchmarks/results_diag_noise.md`` with:

* std of the total and local field and of the noise (ppm), and noise / local;
* NeXtQSM from the total field, clean and noisy (the benchmark's figures);
* the VN alone (no refinement) on the true local field + the same noise: the part of the rise that is the inversion's;
* unweighted TV-ADMM (``nextqsm.methods.tv``) on the clean and the noisy true local field over its weight lam:
  a classical inversion told the true local field, at the best lam chosen with the truth.

    .venv/bin/python benchmarks/diag_noise.py [--heads 13 14 15 16]
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LAMS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)


def main() -> None:
    from nextqsm.methods.tv import tv_admm
    from nextqsm.metrics import nrmse
    from nextqsm.pipeline import QSMInput, run
    from nextqsm_training.heads import realistic_head

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", type=int, nargs="+", default=[13, 14, 15, 16])
    ap.add_argument("--noise-var", type=float, default=0.005)
    ap.add_argument("--out", default=str(HERE / "results_diag_noise.md"))
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for i in a.heads:
        h = realistic_head(i, size=64, voxel_size=None)
        m = h["mask"] > 0
        geo = dict(voxel_size=tuple(map(float, h["voxel_size"])), b0_dir=tuple(map(float, h["b0_dir"])))
        tot, loc, chi = h["total_field"], h["local_field"], h["chi"]
        sd = math.sqrt(a.noise_var) * float(tot[m].std())
        n = rng.normal(0, sd, m.shape).astype(np.float32) * m
        # bench_nextqsm draws a second (local-field) noise per head; keep the stream in step with it
        rng.normal(0, 1.0, m.shape)
        go = lambda f, kind, **kw: nrmse(run("nextqsm", QSMInput(field=f, mask=m, kind=kind, **geo), **kw).chi, chi, m)
        r = {"head": i, "std_total": float(tot[m].std()), "std_local": float(loc[m].std()), "noise": sd,
             "nextqsm_clean": go(tot, "total"), "nextqsm_noisy": go(tot + n, "total"),
             "vn_local_clean": go(loc, "local", refine=False), "vn_local_noisy": go((loc + n) * m, "local", refine=False)}
        for tag, f in (("clean", loc), ("noisy", (loc + n) * m)):
            r[f"tv_{tag}"] = {lam: nrmse(tv_admm(f, m, lam=lam, **geo), chi, m) for lam in LAMS}
        rows.append(r)
        print(r, flush=True)
    L = ["# The noise experiment's noise level, and TV told the true local field", "",
         f"Command: `.venv/bin/python benchmarks/diag_noise.py --heads {' '.join(map(str, a.heads))}` "
         f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); 64^3 held-out heads, shipped weights; "
         f"noise std = sqrt({a.noise_var}) x std(total field in the mask), the draws of bench_nextqsm.py.", "",
         "| head | std total / local / noise [ppm] | noise / local | NeXtQSM total clean -> noisy % | VN on local clean -> "
         "local + noise % | TV on local, best lam: clean / noisy % (lam) |", "|---|---|---|---|---|---|"]
    for r in rows:
        bc = min(r["tv_clean"], key=r["tv_clean"].get)
        bn = min(r["tv_noisy"], key=r["tv_noisy"].get)
        L.append(f"| {r['head']} | {r['std_total']:.4f} / {r['std_local']:.4f} / {r['noise']:.4f} | "
                 f"{r['noise'] / r['std_local']:.2f} | {r['nextqsm_clean']:.1f} -> {r['nextqsm_noisy']:.1f} | "
                 f"{r['vn_local_clean']:.1f} -> {r['vn_local_noisy']:.1f} | {r['tv_clean'][bc]:.1f} ({bc:g}) / "
                 f"{r['tv_noisy'][bn]:.1f} ({bn:g}) |")
    L += ["", "TV NRMSE % per lam (clean | noisy):", ""]
    for r in rows:
        L.append(f"* head {r['head']}: " + ", ".join(f"{lam:g}: {r['tv_clean'][lam]:.1f} | {r['tv_noisy'][lam]:.1f}"
                                                    for lam in LAMS))
    Path(a.out).write_text("\n".join(L) + "\n")
    print("\n".join(L))


if __name__ == "__main__":
    main()
