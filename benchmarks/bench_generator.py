"""Benchmark of the hybrid training-data generator; writes benchmarks/results_generator.md.

    .venv/bin/python benchmarks/bench_generator.py [--pairs 5] [--cache-pairs 32] [--out results_generator.md]

1. On-the-fly speed: make_pair at 160^3 (SynthSeg training maps pre-loaded), wall and CPU time per
   pair, with torch using 2 threads and 1 thread. CPU time with 1 thread is the robust figure on a
   shared machine (wall time there depends on the other users; the load average is recorded).
2. Cache writer: write_cache(size=128, shards, 2 worker processes) on ``--cache-pairs`` pairs,
   extrapolated linearly to 840 pairs.
``--oblique`` instead runs only the background-harmonicity check of the fine-grid background (``bg_supersample``,
session 12) and writes benchmarks/results_generator_oblique.md: V-SHARP applied to the pure background field
(total - local) of 64^3 pairs, B0 along z vs tilted 25 degrees, as a % of the local field's norm (a harmonic
background would leave only V-SHARP's own boundary error), and the time per pair.

3. The issue's acceptance check: ``nextqsm-train generate --n 4 --size 96 --format nifti`` in a
   subprocess; per pair the NRMSE of the core's numpy forward model of chi against localfield
   (inside mask) and the ratio of background RMS (total - local, demeaned, in mask) to local RMS.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def loadavg() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def bench_on_the_fly(n: int, size: int, threads: int) -> dict:
    import torch

    from nextqsm_training.label_sources import expand_sources
    from nextqsm_training.simulate import make_pair

    torch.set_num_threads(threads)
    srcs = expand_sources(None)
    t0 = time.perf_counter()
    for s in srcs:
        s.load()
    t_load = time.perf_counter() - t0
    make_pair(10_000, size=size, source=srcs)   # warm-up
    wall, cpu = [], []
    for i in range(n):
        t, c = time.perf_counter(), time.process_time()
        make_pair(i, size=size, source=srcs)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {"threads": threads, "size": size, "n": n, "load_s": t_load, "sources": len(srcs),
            "wall": wall, "cpu": cpu, "loadavg": loadavg()}


def bench_cache(n: int, size: int, workers: int) -> dict:
    from nextqsm_training.cache import write_cache

    import resource

    def cpu() -> float:
        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    with tempfile.TemporaryDirectory() as d:
        t, c = time.perf_counter(), cpu()
        m = write_cache(Path(d) / "cache", n=n, size=size, seed=0, fmt="shards", shard_size=16,
                        workers=workers, progress=False)
        dt = time.perf_counter() - t
        dc = cpu() - c
        nbytes = sum(f.stat().st_size for f in (Path(d) / "cache").iterdir())
    return {"n": n, "size": size, "workers": workers, "seconds": dt, "per_pair": dt / n, "cpu_per_pair": dc / n,
            "cpu_840_min_2cores": dc / n * 840 / 2 / 60,
            "extrapolated_840_min": dt / n * 840 / 60, "bytes_per_pair": nbytes / n,
            "complete": m["complete"], "loadavg": loadavg()}


def bench_cli(n: int = 4, size: int = 96) -> dict:
    import nibabel as nib

    from nextqsm.dipole import forward_field

    exe = REPO / ".venv" / "bin" / "nextqsm-train"
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "gen"
        cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "nextqsm_training.cli"]),
               "generate", "--n", str(n), "--size", str(size), "--format", "nifti", "--out", str(out)]
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        dt = time.perf_counter() - t
        if r.returncode:
            raise SystemExit(r.stderr)
        rows = []
        for p in sorted(out.glob("pair_*")):
            meta = json.loads((p / "pair.json").read_text())
            ld = {k: np.asarray(nib.load(str(p / f"{k}.nii.gz")).dataobj) for k in ("chi", "localfield", "totalfield", "mask")}
            m = ld["mask"].astype(bool)
            ref = forward_field(ld["chi"], meta["voxel_size_mm"], meta["b0_dir"])
            nrmse = float(np.linalg.norm((ref - ld["localfield"])[m]) / np.linalg.norm(ld["localfield"][m]))
            bg = (ld["totalfield"] - ld["localfield"])[m]
            lo = ld["localfield"][m]
            ratio = float(np.std(bg - bg.mean()) / np.std(lo - lo.mean()))
            rows.append({"pair": p.name, "source": meta["source"], "voxel_size": meta["voxel_size_mm"],
                         "b0_dir": meta["b0_dir"], "nrmse_pct": 100 * nrmse, "bg_over_local": ratio,
                         "local_rms_ppm": float(np.std(lo)), "bg_rms_ppm": float(np.std(bg))})
    return {"cmd": " ".join(["nextqsm-train"] + cmd[cmd.index("generate"):]).replace(str(out), "DIR"),
            "seconds": dt, "rows": rows}


QA_TEXT = """## QA sheets in the README

`Resources/Screenshots/qa_sheet_1.png` and `qa_sheet_2.png` are the QA sheets of:

    nextqsm-train generate --n 4 --size 128 --shard-size 4 --seed 1 --out /tmp/qa1
    nextqsm-train generate --n 4 --size 128 --shard-size 4 --seed 5 --source procedural:3 synthseg:2 --out /tmp/qa2

(copy of `qa_00000.png` of each). Columns: source label map resampled without deformation, deformed
label map, brain chi, local field, total field (demeaned), external chi with the mask outline.
"""


def bench_oblique(pairs: int, size: int, supersample: int) -> list[dict]:
    """Pure-background V-SHARP residual (% of the local field) per pair, B0 along z vs tilted 25 degrees."""
    import torch
    from nextqsm.methods.vsharp import vsharp
    from nextqsm_training.simulate import make_pair

    torch.set_num_threads(2)
    make_pair(0, size=32)   # load the label maps once
    rows = []
    for tag, tilt in (("z", (0.0, 25.0)), ("tilted 25 deg", (1.0, 25.0))):
        for ss, only in ((1, False), (supersample, False), (supersample, True)):
            if only and tag != "z":
                continue   # tilted-only = the full fine grid on a tilted pair
            res, secs = [], []
            for seed in range(pairs):
                t0 = time.process_time()
                p = make_pair(seed, size=size, b0_tilt_deg=tilt, smooth_field=(0.0, 0.0), noise=0.0,
                              bg_supersample=ss, bg_supersample_tilted_only=only)
                secs.append(time.process_time() - t0)
                m = p["mask"] > 0
                loc = p["local_field"]
                lb, em = vsharp((p["total_field"] - loc) * m, m, tuple(map(float, p["voxel_size"])))
                res.append(100 * float(np.linalg.norm(lb[em] - lb[em].mean()) / np.linalg.norm(loc[em] - loc[em].mean())))
            rows.append({"b0": tag, "ss": ss, "tilted_only": only, "resid": res, "cpu_s": secs})
            print(rows[-1], flush=True)
    return rows


def write_oblique(rows: list[dict], pairs: int, size: int, out: Path) -> None:
    L = ["# Generator: background field for a tilted B0 (session 12)", "",
         f"Command: `.venv/bin/python benchmarks/bench_generator.py --oblique --oblique-pairs {pairs}` "
         f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average {loadavg()}).", "",
         f"{pairs} pairs `make_pair(seed, size={size}, b0_tilt_deg=..., smooth_field=(0, 0))`, seeds 0-{pairs - 1}: "
         "V-SHARP (`nextqsm.methods.vsharp`) applied to the pure background field (total - local) inside the "
         "mask leaves this share of the local field's norm (demeaned, on V-SHARP's eroded mask). A harmonic "
         "background leaves only V-SHARP's own boundary error; the session-11 test heads (fine-grid background) "
         "give 9.7 / 9.2 % along z and 13.8 / 13.0 % tilted 20 degrees (heads 13 / 16, 64^3).", "",
         "`bg_supersample` n: the external sources (the deformed full-resolution label map outside the mask; the "
         "ellipsoids, >= 2 mm from the brain, nearest-upsampled from the output grid: drawing them on the fine grid "
         "changed no residual by more than 0.1 point) on an n-times finer grid and their field averaged over each "
         "voxel; 1 = the output grid with the [1, 2, 1] partial-volume blur of the sources (the default). CPU s per "
         "pair: process time of make_pair with 2 torch threads.", "",
         "| B0 | bg_supersample | residual per pair [%] | median [%] | CPU s / pair (median) |", "|---|---|---|---|---|"]
    for r in rows:
        ss = f"{r['ss']}" + (" (tilted only: this pair along z -> 1)" if r["tilted_only"] else "")
        L.append(f"| {r['b0']} | {ss} | {' / '.join(f'{x:.1f}' for x in r['resid'])} | {np.median(r['resid']):.1f} | "
                 f"{np.median(r['cpu_s']):.2f} |")
    L += ["", "On the output grid the background of a tilted pair is far less harmonic than along z (sources with "
          "staircase edges touching the mask); on the 4x grid tilted and z agree. `configs/gpu_next.yaml` uses "
          "`bg_supersample: 4` with `bg_supersample_tilted_only: true`. The default stays 1 (the 2 s per pair bar "
          "at 160^3 on 2 cores, section 1 of results_generator.md)."]
    out.write_text("\n".join(L) + "\n")
    print("\n".join(L))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--cache-pairs", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results_generator.md"))
    ap.add_argument("--oblique", action="store_true", help="only the tilted-B0 background check (session 12)")
    ap.add_argument("--supersample", type=int, default=4)
    ap.add_argument("--oblique-pairs", type=int, default=6)
    a = ap.parse_args()
    if a.oblique:
        n = a.oblique_pairs
        write_oblique(bench_oblique(n, 64, a.supersample), n, 64, REPO / "benchmarks" / "results_generator_oblique.md")
        return

    import torch

    fly = [bench_on_the_fly(a.pairs, 160, t) for t in (2, 1)]
    torch.set_num_threads(2)
    cache = bench_cache(a.cache_pairs, 128, a.workers)
    cli = bench_cli()

    L = ["# Hybrid generator benchmark", "",
         f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores visible, "
         f"torch {torch.__version__}, no GPU. Shared machine: the load average is recorded with each "
         "figure; wall times are inflated when it is above the core count.", "",
         "Command: `nice -n 10 .venv/bin/python benchmarks/bench_generator.py "
         f"--pairs {a.pairs} --cache-pairs {a.cache_pairs} --workers {a.workers}`", "",
         "## 1. On-the-fly pair at 160^3 (chi, local field, total field, mask)", "",
         "Label maps pre-loaded once (allowed by the bar); sources = SynthSeg training maps.", "",
         "| torch threads | pairs | wall median [s] | wall min [s] | CPU median [s] | CPU min [s] | load avg (1/5/15 min) |",
         "|---|---|---|---|---|---|---|"]
    for f in fly:
        L.append(f"| {f['threads']} | {f['n']} | {np.median(f['wall']):.2f} | {np.min(f['wall']):.2f} | "
                 f"{np.median(f['cpu']):.2f} | {np.min(f['cpu']):.2f} | {f['loadavg']} |")
    one = fly[1]
    L += ["", f"Loading and preparing {fly[0]['sources']} SynthSeg maps once: {fly[0]['load_s']:.1f} s.",
          f"**Bar (<= 2 s per pair on 2 cores):** one thread does a pair in {np.median(one['cpu']):.2f} s of CPU "
          "time (median), so 2 uncontended cores need at most that wall time per pair "
          "(2 threads, or 2 DataLoader workers with 1 thread each)."
          , "",
          "## 2. Cache writer, 128^3, sharded", "",
          f"{cache['n']} pairs with {cache['workers']} worker processes (1 torch thread each), shards of 16, QA sheet "
          f"per shard: wall {cache['seconds']:.1f} s = {cache['per_pair']:.2f} s/pair at load avg {cache['loadavg']}; "
          f"CPU time (parent + workers) {cache['cpu_per_pair']:.2f} s/pair; "
          f"{cache['bytes_per_pair'] / 1e6:.1f} MB/pair on disk (lossless, in-mask values).", "",
          "Extrapolation to 840 pairs (linear: pairs are generated independently, shards written as they fill), "
          f"plus the one-off loading of the label maps ({fly[0]['load_s']:.0f} s in part 1; the writer loads them "
          "once in the parent and its forked workers share them; here they were already loaded):", "",
          f"* from the measured wall time on this shared machine: **{cache['extrapolated_840_min'] + fly[0]['load_s'] / 60:.1f} min**;",
          f"* from the CPU time on 2 uncontended cores (CPU s/pair x 840 / 2): **{cache['cpu_840_min_2cores'] + fly[0]['load_s'] / 60:.1f} min**.",
          "", "Bar: <= 30 min on 2 cores.", "",
          "## 3. `generate --format nifti` acceptance check", "",
          f"`{cli['cmd']}` ({cli['seconds']:.1f} s including start-up and loading)", "",
          "| pair | source | voxel size [mm] | B0 | NRMSE(D*chi vs localfield) [%] | bg RMS / local RMS | local RMS [ppm] | bg RMS [ppm] |",
          "|---|---|---|---|---|---|---|---|"]
    for r in cli["rows"]:
        L.append(f"| {r['pair']} | {r['source']} | {' x '.join(f'{v:.2f}' for v in r['voxel_size'])} | "
                 f"({', '.join(f'{v:.2f}' for v in r['b0_dir'])}) | {r['nrmse_pct']:.3f} | {r['bg_over_local']:.1f} | "
                 f"{r['local_rms_ppm']:.4f} | {r['bg_rms_ppm']:.3f} |")
    L += ["", "Bars: NRMSE < 2 % and background/local >= 5 in every pair. The NRMSE is not 0 because the "
          "generator pads by size/6 and the reference (core `forward_field`) by size/4.", "",
          QA_TEXT]
    Path(a.out).write_text("\n".join(L))
    print("\n".join(L))


if __name__ == "__main__":
    main()
