"""Benchmark of the classical QSM methods: accuracy on the 2016 challenge, speed at 160^3, simulated heads.

Usage (from the repository root):
    nice -n 10 .venv/bin/python benchmarks/bench_classical.py [--threads N] [--skip-speed] [--skip-head]

Writes ``benchmarks/results_classical.md`` (with the command line that produced it).

* Challenge (``../shared/data/qsm2016_challenge``, local field in ppm, ``msk``): each registered
  classical pipeline run with ``kind='local'`` (background removal skipped), NRMSE against
  COSMOS and chi_33: 100 ||(x - mean) - (r - mean)|| / ||r - mean|| inside msk.
* Speed at 160^3: V-SHARP on the challenge brain mask (``mask_bet``), iLSQR-style and TV-ADMM on
  the challenge local field, wall-clock seconds on this machine's CPUs (torch threads as set).
* Simulated head (``nextqsm_training.heads.realistic_head``, when it exists): total field in,
  chi and local field NRMSE against the truth, per pipeline.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "qsm2016_challenge"
VOXEL = (1.0625, 1.0625, 1.0714285714285714)
PIPELINES = ["tkd", "vsharp-l2", "vsharp-tv", "vsharp-ilsqr"]


def nrmse(x: np.ndarray, ref: np.ndarray, m: np.ndarray) -> float:
    a, b = x[m] - x[m].mean(), ref[m] - ref[m].mean()
    return 100.0 * float(np.linalg.norm(a - b) / np.linalg.norm(b))


def load_challenge():
    from nextqsm.io import load_nifti

    ld = lambda n: load_nifti(DATA / n).data  # noqa: E731
    return {"field": ld("phs_tissue.nii.gz"), "mask": ld("msk.nii.gz") > 0, "cosmos": ld("chi_cosmos.nii.gz"),
            "chi33": ld("chi_33.nii.gz"), "mask_bet": ld("mask_bet.nii.gz") > 0}


def bench_challenge(ch) -> list[str]:
    from nextqsm import pipeline

    m = ch["mask"]
    inp = pipeline.QSMInput(field=ch["field"], mask=m, voxel_size=VOXEL, b0_dir=(0, 0, 1), kind="local", device="cpu")
    rows = ["| pipeline (kind=local) | NRMSE vs COSMOS % | NRMSE vs chi_33 % | seconds | parameters |", "|---|---|---|---|---|"]
    best = ("", 1e9)
    for name in PIPELINES:
        t0 = time.perf_counter()
        res = pipeline.run(name, inp)
        dt = time.perf_counter() - t0
        e_c, e_33 = nrmse(res.chi, ch["cosmos"], m), nrmse(res.chi, ch["chi33"], m)
        if e_c < best[1]:
            best = (name, e_c)
        keys = {k: v for k, v in res.params.items() if k.split("_", 1)[1] in ("threshold", "lam", "rho", "mu2", "iters", "tol", "maxiter", "sa_maxiter", "pad")}
        rows.append(f"| {name} | {e_c:.1f} | {e_33:.1f} | {dt:.1f} | {keys} |")
        print(rows[-1], flush=True)
    rows.append("")
    rows.append(f"Best: **{best[0]} {best[1]:.1f} %** vs COSMOS (bar: <= 62 %). "
                "For scale, the PROVENANCE baselines: COSMOS vs chi_33 50.1 %.")
    return rows


def bench_speed(ch) -> list[str]:
    import torch

    from nextqsm.methods.ilsqr import ilsqr
    from nextqsm.methods.tv import tv_admm
    from nextqsm.methods.vsharp import vsharp

    rng = np.random.default_rng(0)
    mb = ch["mask_bet"]
    total = (ch["field"] + rng.normal(0, 0.01, mb.shape)).astype(np.float32)
    rows = ["| step (160^3) | seconds | note |", "|---|---|---|"]
    t0 = time.perf_counter()
    vsharp(total, mb, VOXEL)
    rows.append(f"| V-SHARP (default radii 12..1 mm, mask_bet) | {time.perf_counter() - t0:.1f} | scipy.fft, workers=-1 (bar 15 s) |")
    print(rows[-1], flush=True)
    t0 = time.perf_counter()
    ilsqr(ch["field"], ch["mask"], VOXEL, (0, 0, 1), device="cpu")
    rows.append(f"| iLSQR-style (defaults) | {time.perf_counter() - t0:.1f} | torch CPU, {torch.get_num_threads()} thread(s) (bar 60 s) |")
    print(rows[-1], flush=True)
    t0 = time.perf_counter()
    tv_admm(ch["field"], ch["mask"], VOXEL, (0, 0, 1), device="cpu")
    rows.append(f"| TV-ADMM (defaults) | {time.perf_counter() - t0:.1f} | torch CPU, {torch.get_num_threads()} thread(s) |")
    print(rows[-1], flush=True)
    from nextqsm.methods.tgv import DEFAULT_COARSE_ITERATIONS, DEFAULT_ITERATIONS, tgv_qsm

    t0 = time.perf_counter()
    tgv_qsm(total, mb, VOXEL, (0, 0, 1), device="cpu")
    rows.append(f"| TGV (defaults: k-space wave operator, {DEFAULT_ITERATIONS} + {DEFAULT_COARSE_ITERATIONS} per coarser "
                "level iterations, mask_bet) | "
                f"{time.perf_counter() - t0:.1f} | torch CPU, {torch.get_num_threads()} thread(s), "
                "includes the one-off torch.compile (bar 120 s) |")
    print(rows[-1], flush=True)
    return rows


def bench_head(names=None, **head_kw) -> tuple[list[str], dict]:
    """Pipelines on ``realistic_head(**head_kw)`` (total field in); returns table rows and {name: chi NRMSE}."""
    try:
        from nextqsm_training.heads import realistic_head
    except ImportError as exc:
        return [f"Skipped: `nextqsm_training.heads.realistic_head` is not available ({exc})."], {}
    from nextqsm import pipeline

    h = realistic_head(**head_kw)
    m = np.asarray(h["mask"]) > 0
    inp = pipeline.QSMInput(field=h["total_field"], mask=m, voxel_size=tuple(float(v) for v in h["voxel_size"]),
                            b0_dir=tuple(float(b) for b in h["b0_dir"]), kind="total", device="cpu")
    rows = [f"realistic_head({', '.join(f'{k}={v}' for k, v in head_kw.items())}): voxel size "
            f"{tuple(round(float(v), 3) for v in h['voxel_size'])} mm, B0 {tuple(round(float(b), 3) for b in h['b0_dir'])}, "
            f"{int(m.sum())} mask voxels.", "",
            "| pipeline (kind=total) | chi NRMSE % (mask used) | local-field NRMSE % | seconds |", "|---|---|---|---|"]
    scores = {}
    for name in names or PIPELINES + ["pdf-tv", "tgv"]:
        t0 = time.perf_counter()
        res = pipeline.run(name, inp)
        dt = time.perf_counter() - t0
        e_l = nrmse(res.local_field, h["local_field"], res.mask) if res.local_field is not None else float("nan")
        scores[name] = nrmse(res.chi, h["chi"], res.mask)
        rows.append(f"| {name} | {scores[name]:.1f} | {e_l:.1f} | {dt:.1f} |")
        print(rows[-1], flush=True)
    return rows, scores


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-head", action="store_true")
    ap.add_argument("--oblique", action="store_true",
                    help="also run tkd and vsharp-ilsqr on the head with B0 tilted 25 degrees and 1x1x2 mm voxels")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results_classical.md"))
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    lines = ["# Classical QSM methods: benchmark results", "",
             f"Command: `{' '.join(['python'] + [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])}` "
             f"(from the repository root), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), torch {torch.__version__} "
             f"with {torch.get_num_threads()} thread(s); load average at start {os.getloadavg()[0]:.1f} "
             "(the runner is shared: wall-clock times are upper bounds).", ""]
    if not DATA.exists():
        lines += ["## 2016 challenge", "", f"Skipped: {DATA} not found.", ""]
    else:
        ch = load_challenge()
        lines += ["## 2016 challenge local field (dipole inversion only)", ""] + bench_challenge(ch) + [""]
        if not args.skip_speed:
            lines += ["## Speed at 160^3", ""] + bench_speed(ch) + [""]
    if not args.skip_head:
        rows, ax = bench_head()
        lines += ["## Simulated head (total field in, noise-free)", ""] + rows + [""]
        if args.oblique and ax:
            tilt = (0.0, float(np.sin(np.deg2rad(25))), float(np.cos(np.deg2rad(25))))
            for title, kw in (("oblique B0 (25 degrees), 1 mm isotropic", dict(b0_dir=tilt)),
                              ("axial B0, 1x1x2 mm voxels", dict(voxel_size=(1.0, 1.0, 2.0))),
                              ("oblique B0 (25 degrees) and 1x1x2 mm voxels", dict(b0_dir=tilt, voxel_size=(1.0, 1.0, 2.0)))):
                rows, ob = bench_head(["tkd", "vsharp-ilsqr", "tgv"], **kw)
                rel = [f"{k}: {100 * (ob[k] - ax[k]) / ax[k]:+.1f} %" for k in ob]
                lines += [f"## Simulated head, {title}", ""] + rows + [
                    "", "Relative change of chi NRMSE against the axial isotropic head (bar: within 10 %): "
                    + ", ".join(rel), ""]
    lines += [f"Load average at the end: {os.getloadavg()[0]:.1f}.", ""]
    from nextqsm.io import write_text_atomic

    write_text_atomic(args.out, "\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
