#!/usr/bin/env python
"""Why the 2016 challenge is hard for the VN: its local field against the dipole field of its own COSMOS map.

Measures (writes ``benchmarks/results_diag_challenge.md``):

* the residual r = measured local field - D * COSMOS (ppm, in the mask): RMS against the field's,
  and how much of it survives a Gaussian smoothing (white noise: little; smooth model errors such
  as anisotropy, which COSMOS does not model: most);
* NeXtQSM's VN (``--input local``) on the measured field, on D * COSMOS, and on D * COSMOS plus
  white noise of r's RMS, each also after a Gaussian post-blur of chi (NRMSE % vs COSMOS);
* the inversion alone on the measured field and on D * COSMOS: the VN without and with its final
  consistency step, the default (VN + TV refinement) and TKD (NRMSE % and XSIM vs COSMOS);
* the project's closed-form gradient-regularised L2 inversion (``nextqsm.methods.l2``) over its
  weight lam: how far plain linear regularisation goes on this data;
* where the errors lie in k-space: the VN's and unweighted TV's (``nextqsm.methods.tv``) error per
  band of |k| (cycles/voxel), inside the magic cone (|D| < 0.1) and outside it, as % of COSMOS's energy.

    .venv/bin/python benchmarks/diag_challenge.py [--weights-dir DIR]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "qsm2016_challenge"
VOXEL = (1.0625, 1.0625, 1.0714286)


BANDS = ((0.0, 0.05), (0.05, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 1.0))


def band_errors(x: np.ndarray, ref: np.ndarray, m: np.ndarray, cone: float = 0.1) -> list[tuple[float, float]]:
    """Error of ``x`` against ``ref`` (both demeaned in the mask, zero outside) per band of |k|
    (:data:`BANDS`, cycles/voxel), (inside the magic cone |D| < ``cone``, outside), in % of ref's
    energy: the squares of all cells sum to the demeaned NRMSE squared. B0 along the last axis."""
    def dm(v):
        return np.where(m, v - v[m].mean(), 0.0)
    E, R = np.fft.fftn(dm(x) - dm(ref)), np.fft.fftn(dm(ref))
    K = np.meshgrid(*[np.fft.fftfreq(n) for n in m.shape], indexing="ij")
    kk = np.sqrt(sum(q ** 2 for q in K)) + 1e-12
    in_cone = np.abs(1.0 / 3.0 - (K[2] / kk) ** 2) < cone
    norm = (np.abs(R) ** 2).sum()
    out = []
    for lo, hi in BANDS:
        b = (kk >= lo) & (kk < hi)
        out.append(tuple(100 * np.sqrt((np.abs(E[b & c]) ** 2).sum() / norm) for c in (in_cone, ~in_cone)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights-dir", default=None)
    ap.add_argument("--out", default=str(HERE / "results_diag_challenge.md"))
    args = ap.parse_args(argv)

    from nextqsm.dipole import forward_field
    from nextqsm.io import load_nifti
    from nextqsm.methods.l2 import l2_inversion
    from nextqsm.metrics import nrmse
    from nextqsm.pipeline import QSMInput, run

    if not DATA.exists():
        print(f"{DATA} not found", file=sys.stderr)
        return 1
    lf = load_nifti(DATA / "phs_tissue.nii.gz").data.astype(np.float64)
    m = load_nifti(DATA / "msk.nii.gz").data > 0
    cos = load_nifti(DATA / "chi_cosmos.nii.gz").data.astype(np.float64)
    fc = forward_field(cos * m, VOXEL, (0.0, 0.0, 1.0)) * m
    r = (lf - fc) * m
    white = np.random.default_rng(0).normal(0.0, 1.0, m.shape)
    L = ["# The 2016 challenge's local field against the dipole field of its own COSMOS map", "",
         f"Command: `.venv/bin/python benchmarks/diag_challenge.py{' --weights-dir ' + args.weights_dir if args.weights_dir else ''}`  ",
         f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. NRMSE = demeaned NRMSE % vs COSMOS in msk.", "",
         f"* RMS in the mask: measured field {lf[m].std():.4f} ppm, D * COSMOS {fc[m].std():.4f} ppm, "
         f"residual {r[m].std():.4f} ppm ({r[m].std() / lf[m].std():.2f}x the field)."]
    for s in (1.0, 2.0):
        L.append(f"* fraction of the residual's RMS left after a Gaussian smoothing of sigma {s} voxel: "
                 f"{ndi.gaussian_filter(r, s)[m].std() / r[m].std():.2f} (white noise: "
                 f"{ndi.gaussian_filter(white, s)[m].std() / white[m].std():.2f})")
    L += ["", "| VN input | chi NRMSE | + blur 0.5 | + blur 0.7 | + blur 1.0 |", "|---|---|---|---|---|"]
    kw = {"weights_dir": args.weights_dir} if args.weights_dir else {}
    chis = {}
    for name, f in (("measured local field", lf), ("D * COSMOS", fc),
                    ("D * COSMOS + white noise of the residual's RMS", fc + white * r[m].std() * m)):
        x = chis[name] = run("nextqsm", QSMInput(field=f.astype(np.float32), mask=m, kind="local", voxel_size=VOXEL,
                                                 b0_dir=(0.0, 0.0, 1.0)), **kw).chi
        cells = [f"{nrmse(x, cos, m):.1f}"] + [f"{nrmse(ndi.gaussian_filter(x, g) * m, cos, m):.1f}" for g in (0.5, 0.7, 1.0)]
        L.append(f"| {name} | " + " | ".join(cells) + " |")
        print(L[-1], flush=True)
    # the VN alone (no refinement; with and without its final consistency step) against TKD, on the measured
    # field and on D * COSMOS (real anatomy, exactly dipolar, noise-free): a gap on D * COSMOS is the network's
    L += ["", "The inversion alone, NRMSE % / XSIM vs COSMOS (VN: `refine=False`; `dc_mu=0`: no final consistency step):",
          "", "| VN input | VN, dc_mu=0 | VN + consistency step | VN + TV refinement (default) | TKD |", "|---|---|---|---|---|"]
    from nextqsm.metrics import xsim

    for name, f in (("measured local field", lf), ("D * COSMOS", fc)):
        inp = QSMInput(field=f.astype(np.float32), mask=m, kind="local", voxel_size=VOXEL, b0_dir=(0.0, 0.0, 1.0))
        xs = [run("nextqsm", inp, refine=False, dc_mu=0.0, **kw).chi, run("nextqsm", inp, refine=False, **kw).chi,
              chis[name], run("tkd", inp).chi]
        L.append(f"| {name} | " + " | ".join(f"{nrmse(x, cos, m):.1f} / {xsim(x, cos, m):.3f}" for x in xs) + " |")
        print(L[-1], flush=True)
    L += ["", "Closed-form gradient-regularised L2 (`nextqsm.methods.l2.l2_inversion`) on the measured field, "
          "NRMSE % vs COSMOS: " + ", ".join(
              f"lam {lam}: {nrmse(l2_inversion(lf, m, VOXEL, lam=lam), cos, m):.1f}" for lam in (0.003, 0.01, 0.03, 0.1, 0.3))]
    from nextqsm.methods.tv import tv_admm

    tv = np.asarray(tv_admm(lf, m, VOXEL))
    vn = chis["measured local field"]   # the shipped default for a local field (since session 10: VN + TV refinement)
    vn_dc = run("nextqsm", QSMInput(field=lf.astype(np.float32), mask=m, kind="local", voxel_size=VOXEL,
                                    b0_dir=(0.0, 0.0, 1.0)), refine=False, **kw).chi
    L += ["", "VN input rows above: NeXtQSM's default for a local field (the VN, then the TV refinement).", "",
          f"Error by k-space band, % of COSMOS's energy (NRMSE: NeXtQSM default {nrmse(vn, cos, m):.1f}, "
          f"VN with its consistency step (`refine=False`) {nrmse(vn_dc, cos, m):.1f}, "
          f"unweighted TV {nrmse(tv, cos, m):.1f}); each cell: inside the cone / outside it", "",
          "| band of the k magnitude, cycles/voxel | " + " | ".join(f"{lo}-{hi}" for lo, hi in BANDS) + " |", "|---|" + "---|" * len(BANDS)]
    for name, x in (("NeXtQSM (VN + TV refinement)", vn), ("VN (consistency step)", vn_dc), ("TV", tv)):
        b = band_errors(x, cos, m)
        L.append(f"| {name} | " + " | ".join(f"{b[i][0]:.1f} / {b[i][1]:.1f}" for i in range(len(BANDS))) + " |")
    Path(args.out).write_text("\n".join(L) + "\n")
    print("\n".join(L))
    return 0


if __name__ == "__main__":
    sys.exit(main())
