#!/usr/bin/env python
"""NeXtQSM benchmarks: accuracy on held-out simulated heads, the 2016 challenge (VN alone), the noise
experiment (NeXtQSM vs the model-agnostic U-Net baseline), and CPU speed / peak memory.

Writes ``benchmarks/results_nextqsm.md`` (and ``.json``). Every number comes from this script;
methods that are not importable are skipped and listed. Run (nice, 2 threads):

    nice -n 10 .venv/bin/python benchmarks/bench_nextqsm.py --size 96 --heads 13 14 15 16
    nice -n 10 .venv/bin/python benchmarks/bench_nextqsm.py --only speed

Noise experiment: Gaussian noise of variance 0.005 relative to the input normalised to unit variance
inside the mask (std = sqrt(0.005) * std(field in mask), i.e. ~7 % of the field's spread), added to the
total field (full pipelines) and to the local field (inversion alone). The paper's units are not
stated; 0.005 ppm^2 absolute would exceed the local field itself (std ~0.02 ppm).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO.parent / "shared" / "data"
CLASSICAL = ("tgv", "vsharp-ilsqr", "tkd")


def metrics(x, ref, mask) -> dict:
    from nextqsm_training.evaluate import score

    return {k: round(v, 4) for k, v in score(x, ref, mask).items()}


WEIGHTS_DIR = None  # set by --weights-dir (default: the shipped weights)
NEXTQSM_PARAMS: dict = {}  # set by --nextqsm-param KEY=VALUE (e.g. tta=4)


def run_method(name, inp, **kw):
    from nextqsm.pipeline import run

    if name in ("nextqsm", "unet-baseline") and WEIGHTS_DIR:
        kw.setdefault("weights_dir", WEIGHTS_DIR)
    if name == "nextqsm":
        kw = {**NEXTQSM_PARAMS, **kw}
    t = time.perf_counter()
    res = run(name, inp, **kw)
    return res, time.perf_counter() - t


def available(names):
    """Importable methods; ``nextqsm:vsharp`` / ``nextqsm:unet`` = that background removal + the VN,
    ``nextqsm:local`` = the true local field given as a user-supplied local field (the VN, then since session 10
    the TV refinement; diagnostic variants)."""
    from nextqsm.pipeline import available_methods

    av = set(available_methods())
    return [n for n in names if n.split(":")[0] in av], [n for n in names if n.split(":")[0] not in av]


def tilted_b0(deg: float) -> tuple[float, float, float]:
    """B0 unit vector tilted ``deg`` degrees from the k axis towards j (``nextqsm_training.heads.tilted_b0``)."""
    from nextqsm_training.heads import tilted_b0 as tilt

    return tilt(deg)


def bench_heads(heads, size, methods, noise_var, log, reuse: dict | None = None, b0_tilt: float = 0.0) -> dict:
    from nextqsm.pipeline import QSMInput
    from nextqsm_training.heads import realistic_head

    out = {"cases": [], "noise": []}
    rng = np.random.default_rng(0)
    for i in heads:
        h = realistic_head(i, size=size, voxel_size=None, b0_dir=tilted_b0(b0_tilt))
        mask = h["mask"] > 0
        inp = QSMInput(field=h["total_field"], mask=mask, kind="total", voxel_size=tuple(h["voxel_size"]),
                       b0_dir=tuple(h["b0_dir"]))
        row = {"head": i, "voxel_size": [round(float(v), 3) for v in h["voxel_size"]]}
        old = next((c for c in (reuse or {}).get("cases", []) if c["head"] == i), {})
        row.update({k: v for k, v in old.items() if k not in methods and k not in ("head", "voxel_size")})
        for m in methods:
            try:
                name, _, variant = m.partition(":")
                if variant == "local":   # the inversion alone on the true local field
                    loc = QSMInput(field=h["local_field"], mask=mask, kind="local", voxel_size=tuple(h["voxel_size"]),
                                   b0_dir=tuple(h["b0_dir"]))
                    res, dt = run_method(name, loc)
                else:
                    res, dt = run_method(name, inp, **({"bfr": variant} if variant else {}))
                row[m] = {**metrics(res.chi, h["chi"], mask), "seconds": round(dt, 1)}
            except Exception as exc:  # report, keep going
                row[m] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            log(f"head {i} {m}: {row[m]}")
        out["cases"].append(row)
        if noise_var:
            # Noise of variance ``noise_var`` relative to the input normalised to unit variance in the
            # mask (the networks normalise their input the same way): std = sqrt(noise_var) * std(field).
            nrow = {"head": i}
            for kind, key in (("total", "total_field"), ("local", "local_field")):
                f = h[key]
                sd = math.sqrt(noise_var) * float(f[mask].std())
                noisy = f + rng.normal(0, sd, mask.shape).astype(np.float32) * mask
                clean_in = QSMInput(field=f, mask=mask, kind=kind, voxel_size=tuple(h["voxel_size"]),
                                    b0_dir=tuple(h["b0_dir"]))
                noisy_in = QSMInput(field=noisy, mask=mask, kind=kind, voxel_size=tuple(h["voxel_size"]),
                                    b0_dir=tuple(h["b0_dir"]))
                for m in ("nextqsm", "nextqsm:unet", "unet-baseline"):   # nextqsm:unet = the paper's pipeline
                    if m not in methods or (kind == "local" and ":" in m):
                        continue
                    name, _, variant = m.partition(":")
                    kw = {"bfr": variant} if variant else {}
                    c = metrics(run_method(name, clean_in, **kw)[0].chi, h["chi"], mask)["nrmse"]
                    n = metrics(run_method(name, noisy_in, **kw)[0].chi, h["chi"], mask)["nrmse"]
                    nrow[f"{m} ({kind})"] = {"noise_std_ppm": round(sd, 5), "clean": c, "noisy": n,
                                             "rise": round(n - c, 3)}
            out["noise"].append(nrow)
            log(f"noise head {i}: {nrow}")
    return out


def bench_challenge(log) -> dict:
    from nextqsm.io import load_nifti
    from nextqsm.pipeline import QSMInput

    d = DATA / "qsm2016_challenge"
    if not d.exists():
        return {"skipped": f"{d} not found"}
    lf = load_nifti(d / "phs_tissue.nii.gz").data
    mask = load_nifti(d / "msk.nii.gz").data > 0
    cosmos = load_nifti(d / "chi_cosmos.nii.gz").data
    chi33 = load_nifti(d / "chi_33.nii.gz").data
    inp = QSMInput(field=lf, mask=mask, kind="local", voxel_size=(1.0625, 1.0625, 1.0714286), b0_dir=(0.0, 0.0, 1.0))
    out = {}
    # nextqsm: the shipped default for a local field (the VN, then the TV refinement); nextqsm:vn-dc: the VN with
    # its own consistency step and no refinement (the session-9 default, refine=False)
    for m in ("nextqsm", "nextqsm:vn-dc", "unet-baseline", "tkd"):
        try:
            name, kw = (("nextqsm", {"refine": False}) if m == "nextqsm:vn-dc" else (m, {}))
            res, dt = run_method(name, inp, **kw)
            out[m] = {"vs_cosmos": metrics(res.chi, cosmos, mask), "vs_chi33": metrics(res.chi, chi33, mask),
                      "seconds": round(dt, 1)}
            if "refine" in res.params:
                out[m]["refine"] = res.params["refine"]
        except Exception as exc:
            out[m] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
        log(f"challenge {m}: {out[m]}")
    return out


def speed_one(shape: tuple[int, int, int], threads: int, weights_dir: str | None = None, bfr: str | None = None,
              kind: str = "total", params: dict | None = None) -> dict:
    """One inference in this process on a synthetic volume of ``shape`` (ellipsoid mask).

    ``kind='total'``: white-noise total field (the U-Net / V-SHARP path). ``kind='local'``: the dipole field of a
    smooth random chi in the mask (the VN, then the TV refinement of a user-supplied local field).
    """
    import torch

    from nextqsm.pipeline import QSMInput, run

    torch.set_num_threads(threads)
    c = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    mask = ((c / np.array([0.85, 0.85, 0.8])[:, None, None, None]) ** 2).sum(0) < 1
    rng = np.random.default_rng(0)
    if kind == "local":
        from scipy import ndimage as ndi

        from nextqsm.dipole import forward_field

        chi = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 2.0) * mask
        field = (forward_field(0.1 * chi / chi[mask].std(), (1.0, 1.0, 1.0), (0.0, 0.0, 1.0)) * mask).astype(np.float32)
    else:
        field = (0.05 * rng.standard_normal(shape)).astype(np.float32) * mask
    inp = QSMInput(field=field, mask=mask, kind=kind, voxel_size=(1.0, 1.0, 1.0))
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    res = run("nextqsm", inp, device="cpu", weights_dir=weights_dir, bfr=bfr, **(params or {}))
    total = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    peak_mb = r1.ru_maxrss / 1024
    return {"shape": list(shape), "threads": threads, "input": kind, "bfr": res.params.get("bfr"),
            "refine": res.params.get("refine"), "precision": res.params.get("precision"), "seconds": round(total, 1),
            "cpu_seconds": round(cpu, 1),
            "loadavg_1min": round(os.getloadavg()[0], 1),
            "timings": {k: round(v, 2) for k, v in res.timings.items()}, "peak_rss_mb": round(peak_mb),
            "crop": res.params.get("crop_shape")}


def bench_speed(shapes, threads, log, weights_dir=None, bfr=None, kind="total") -> list:
    rows = []
    for s in shapes:
        extra = (["--weights-dir", str(weights_dir)] if weights_dir else []) + (["--bfr", bfr] if bfr else []) \
            + ["--speed-input", kind] + [f"--nextqsm-param={k}={v}" for k, v in NEXTQSM_PARAMS.items()]
        p = subprocess.run([sys.executable, __file__, "--speed-one", *map(str, s), "--threads", str(threads), *extra],
                           capture_output=True, text=True)
        try:
            rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
        except Exception:
            rows.append({"shape": list(s), "error": p.stderr[-500:]})
        log(f"speed {s}: {rows[-1]}")
    return rows


def write_md(res: dict, path: Path, argv: list[str], weights_dir=None) -> None:
    L = ["# NeXtQSM benchmark results", "",
         f"Command: `{' '.join(['.venv/bin/python', 'benchmarks/bench_nextqsm.py', *argv])}`  ",
         f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {os.cpu_count()} CPU cores "
         f"(shared with other jobs: timings are upper bounds), CPU only.", ""]
    try:
        from nextqsm.models.weights import describe

        L += [f"Weights ({weights_dir or 'shipped'}): " + ", ".join(
            f"{n} (steps {e['steps']}, sha256 {str(e['sha256'])[:12]}...)" for n, e in describe(weights_dir).items()), ""]
    except Exception:
        pass
    if res.get("skipped_methods"):
        L += [f"Skipped (not importable): {', '.join(res['skipped_methods'])}", ""]
    if "heads" in res:
        cases = res["heads"]["cases"]
        methods = [m for m in res["methods"] if any(m in c for c in cases)]
        L += ["## Held-out simulated heads (total field -> chi), SynthSeg maps never used in training", "",
              f"`nextqsm_training.heads.realistic_head(i, size={res['size']}, voxel_size=None"
              + (f", b0_dir=tilted_b0({res['b0_tilt']:g})" if res.get("b0_tilt") else "") + ")` (background field "
              "from sources on a grid of <= 0.75 mm voxels, averaged per voxel, since session 11); "
              "NRMSE = demeaned NRMSE %; XSIM = QSM-CI's XSIM on the maps as given; XSIMr = XSIM of the maps "
              "each referenced to its mean in the mask (`nextqsm.metrics.xsim_ref`; the truth is CSF-referenced, "
              "its mask mean is +0.003-0.010 ppm on heads 1-16, which no method can observe after background removal). "
              "`nextqsm:local`: the true local field given as a user's local field (`--input local`: the VN, then the "
              "TV refinement).", "",
              "| head | voxel mm | " + " | ".join(f"{m} NRMSE / XSIM / XSIMr / s" for m in methods) + " |",
              "|---|---|" + "---|" * len(methods)]
        for c in cases:
            cells = []
            for m in methods:
                r = c.get(m, {})
                xr = f"{r['xsim_ref']:.3f}" if "xsim_ref" in r else "-"
                cells.append(f"{r['nrmse']:.1f} / {r['xsim']:.3f} / {xr} / {r['seconds']}" if "nrmse" in r else r.get("error", "-"))
            L.append(f"| {c['head']} | {c['voxel_size'][0]} | " + " | ".join(cells) + " |")
        L.append("")
        if res["heads"]["noise"]:
            keys = [k for k in res["heads"]["noise"][0] if k != "head"]
            L += ["## Noise experiment (Gaussian noise, variance 0.005 relative to the unit-variance input: "
                  "std = sqrt(0.005) x std(field in mask))", "",
                  "NRMSE % clean -> noisy (rise). `(total)`: total field in; `(local)`: local field in "
                  "(NeXtQSM's VN vs the baseline's inversion U-Net).", "",
                  "| head | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
            for n in res["heads"]["noise"]:
                f = lambda r: f"{r['clean']:.1f} -> {r['noisy']:.1f} ({r['rise']:+.1f})" if r else "-"
                L.append(f"| {n['head']} | " + " | ".join(f(n.get(k)) for k in keys) + " |")
            L.append("")
    if "challenge" in res:
        L += ["## 2016 challenge local field (`--input local`: no background removal), mask msk", "",
              "`nextqsm`: the shipped default for a local field, the VN then the TV refinement with the VN's chi as "
              "prior (`refine`: method, magic-cone energy c, weight l(c)); `nextqsm:vn-dc`: the VN with its own "
              "consistency step, no refinement (`refine=False`).", "",
              "| method | NRMSE vs COSMOS | XSIM / XSIMr vs COSMOS | NRMSE vs chi_33 | s |", "|---|---|---|---|---|"]
        for m, r in res["challenge"].items():
            if isinstance(r, dict) and "vs_cosmos" in r:
                xr = r["vs_cosmos"].get("xsim_ref")
                rf = r.get("refine")
                tag = m if not rf else f"{m} (c {rf['c']:.3f}, l {rf['l']:.4f}, mu {rf['mu']})"
                L.append(f"| {tag} | {r['vs_cosmos']['nrmse']:.1f} | {r['vs_cosmos']['xsim']:.3f} / "
                         f"{'-' if xr is None else f'{xr:.3f}'} | "
                         f"{r['vs_chi33']['nrmse']:.1f} | {r['seconds']} |")
            else:
                L.append(f"| {m} | {r} | | | |")
        L.append("")
    if "speed" in res:
        L += ["## Speed and peak memory (CPU, total field -> chi, synthetic ellipsoid mask)", "",
              res.get("speed_note", ""), "",
              "Wall seconds on the shared machine are inflated by the other jobs (load average given); CPU seconds "
              "(user + system, all threads) is the work done: on an idle machine the wall time lies between "
              "CPU s / threads and CPU s.", "",
              "| shape | BFR | threads | precision | crop | wall s | CPU s | load avg | BFR s | VN s | peak RSS MB |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["speed"]:
            if "seconds" in r:
                t = r["timings"]
                bs = t.get("bfr", t.get("vsharp", t.get("lbv")))
                bfr_cell = (f"none (local field in; TV refinement {t.get('refine')} s)" if r.get("input") == "local"
                            else r.get("bfr", "unet"))
                L.append(f"| {r['shape']} | {bfr_cell} | {r['threads']} | {r.get('precision') or 'float32'} | "
                         f"{r['crop']} | {r['seconds']} | "
                         f"{r.get('cpu_seconds')} | {r.get('loadavg_1min')} | {bs} | {t.get('inversion')} | {r['peak_rss_mb']} |")
            else:
                L.append(f"| {r['shape']} | error | {r.get('error', '')[:100]} |")
        L.append("")
    path.write_text("\n".join(L) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--heads", type=int, nargs="+", default=[13, 14, 15, 16])
    ap.add_argument("--only", nargs="+", choices=["heads", "challenge", "speed"], default=["heads", "challenge", "speed"])
    ap.add_argument("--noise-var", type=float, default=0.005)
    ap.add_argument("--b0-tilt", type=float, default=0.0,
                    help="heads: B0 tilted this many degrees from the k axis towards j (oblique head)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", default="164x205x205,256x256x176")
    ap.add_argument("--out", default=str(HERE / "results_nextqsm.md"))
    ap.add_argument("--methods", nargs="+", default=["nextqsm", "unet-baseline", *CLASSICAL])
    ap.add_argument("--reuse", default=None, help="JSON of an earlier run: keep its results for methods not rerun")
    ap.add_argument("--weights-dir", default=None, help="weights folder (default: the shipped weights)")
    ap.add_argument("--nextqsm-param", action="append", default=[], metavar="KEY=VALUE",
                    help="extra parameter for every nextqsm run, e.g. tta=4 (integers and floats are converted)")
    ap.add_argument("--bfr", default=None, choices=["unet", "vsharp", "lbv"], help="background removal for the speed runs")
    ap.add_argument("--speed-input", default="total", choices=["total", "local"],
                    help="speed runs: total field (default) or a user-supplied local field (VN + TV refinement)")
    ap.add_argument("--speed-one", type=int, nargs=3, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for kv in args.nextqsm_param:
        from nextqsm.cli import _parse_param

        k, v = _parse_param(kv)
        NEXTQSM_PARAMS[k] = v
    if args.speed_one:
        print(json.dumps(speed_one(tuple(args.speed_one), args.threads, args.weights_dir, args.bfr, args.speed_input,
                                   NEXTQSM_PARAMS)))
        return 0
    import torch

    global WEIGHTS_DIR
    WEIGHTS_DIR = args.weights_dir
    torch.set_num_threads(args.threads)
    log = lambda s: print(time.strftime("%H:%M:%S"), s, flush=True)
    methods, skipped = available(args.methods)
    reuse = json.loads(Path(args.reuse).read_text()) if args.reuse else {}
    res: dict = {"methods": list(dict.fromkeys([*methods, *reuse.get("methods", [])])), "skipped_methods": skipped,
                 "size": args.size, "b0_tilt": args.b0_tilt}
    if "heads" in args.only:
        res["heads"] = bench_heads(args.heads, args.size, methods, args.noise_var, log, reuse.get("heads"),
                                   b0_tilt=args.b0_tilt)
    if "challenge" in args.only:
        res["challenge"] = bench_challenge(log)
    if "speed" in args.only:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        res["speed"] = bench_speed(shapes, args.threads, log, args.weights_dir, args.bfr, args.speed_input)
    elif reuse.get("speed"):
        res["speed"] = reuse["speed"]
        res["speed_note"] = f"speed rows reused from {args.reuse}"
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str))
    write_md(res, out, sys.argv[1:] if argv is None else argv, args.weights_dir)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
