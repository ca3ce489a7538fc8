#!/usr/bin/env python
"""Does the VN's prior depend on voxel-sharp tissue edges? The inversion alone on synthetic heads whose chi is blurred.

The generator's chi is a label map filled per label: its tissue boundaries are voxel-sharp steps, unlike real chi maps
(partial volume, point-spread function, COSMOS's own smoothing). For heads 13 (64^3, ~2.8 mm) and training map 2
(1 mm 160^3), B0 along z, chi is blurred inside the mask by ``nextqsm_training.susceptibility.partial_volume``
(Gaussian std sigma voxels), its true local field computed with the core forward model, and inverted by the VN
without (``dc_mu=0``) and with its consistency step (``refine=False``), and by TKD. NRMSE % / XSIM against the
blurred chi. Writes ``benchmarks/results_diag_partial_volume.md``::

    .venv/bin/python benchmarks/diag_partial_volume.py [--weights-dir DIR]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "NeXtQSM"), str(HERE.parent / "NeXtQSMTraining")]


def blurred_case(h: dict, sigma: float, b0_dir=(0.0, 0.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """``h`` (a :func:`realistic_head` dict) with chi blurred inside its mask by ``sigma`` voxels: (chi ppm, its true
    local field ppm, both masked)."""
    import torch

    from nextqsm.dipole import forward_field
    from nextqsm_training.susceptibility import partial_volume

    m = h["mask"] > 0
    c = torch.from_numpy(h["chi"].copy())
    partial_volume(c, torch.from_numpy(m), sigma)
    chi = c.numpy() * m
    f = (forward_field(chi, tuple(float(x) for x in h["voxel_size"]), b0_dir) * m).astype(np.float32)
    return chi, f


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights-dir", default=None)
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.5, 0.8, 1.2])
    ap.add_argument("--out", default=str(HERE / "results_diag_partial_volume.md"))
    a = ap.parse_args(argv)
    from nextqsm.io import write_text_atomic
    from nextqsm.metrics import nrmse, xsim
    from nextqsm.pipeline import QSMInput, run
    from nextqsm_training.heads import realistic_head

    kw = {"weights_dir": a.weights_dir} if a.weights_dir else {}
    L = ["# The inversion alone on synthetic heads with blurred (partial-volume) chi", "",
         f"Command: `.venv/bin/python benchmarks/diag_partial_volume.py{' --weights-dir ' + a.weights_dir if a.weights_dir else ''}`  ",
         f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. True local field of the blurred chi, B0 along z; "
         "NRMSE % / XSIM against the blurred chi.", "",
         "| head | sigma, voxels | VN, dc_mu=0 | VN + consistency step | TKD |", "|---|---|---|---|---|"]
    for i, size, vs in ((13, 64, None), (2, 160, (1.0, 1.0, 1.0))):
        h = realistic_head(i, size=size, voxel_size=vs)
        m = h["mask"] > 0
        v = tuple(float(x) for x in h["voxel_size"])
        for s in a.sigmas:
            chi, f = blurred_case(h, s)
            inp = QSMInput(field=f, mask=m, kind="local", voxel_size=v, b0_dir=(0.0, 0.0, 1.0))
            xs = [run("nextqsm", inp, refine=False, dc_mu=0.0, **kw).chi, run("nextqsm", inp, refine=False, **kw).chi,
                  run("tkd", inp).chi]
            name = f"{i} ({size}^3, {v[0]:.2f} mm)"
            L.append(f"| {name} | {s} | " + " | ".join(f"{nrmse(x, chi, m):.1f} / {xsim(x, chi, m):.3f}" for x in xs) + " |")
            print(L[-1], flush=True)
    out = Path(a.out)
    write_text_atomic(out, "\n".join(L) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
