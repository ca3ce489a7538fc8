"""CUDA speed and peak GPU memory of full NeXtQSM inference (and TGV), for a lent GPU.

Synthetic total field (ellipsoid mask, 1 mm) of each shape; one untimed warm-up run per case,
then ``--repeats`` timed runs (wall seconds with ``torch.cuda.synchronize``; the median is
reported) and ``torch.cuda.max_memory_allocated`` of a timed run. Writes JSON and Markdown::

    python benchmarks/bench_gpu.py --out benchmarks/results_gpu.md [--weights-dir DIR ...]
    python benchmarks/bench_gpu.py --from-json results_gpu.json --out benchmarks/results_gpu.md
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "NeXtQSM"), str(HERE.parent / "NeXtQSMTraining")]


def synthetic_input(shape):
    from nextqsm.pipeline import QSMInput

    c = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    mask = ((c / np.array([0.85, 0.85, 0.8])[:, None, None, None]) ** 2).sum(0) < 1
    field = (0.05 * np.random.default_rng(0).standard_normal(shape)).astype(np.float32) * mask
    return QSMInput(field=field, mask=mask, kind="total", voxel_size=(1.0, 1.0, 1.0))


def time_case(method: str, shape, repeats: int, **params) -> dict:
    import torch

    from nextqsm.pipeline import run

    inp = synthetic_input(shape)
    if method == "nextqsm":
        params = {**params, "device": "cuda"}
    else:
        inp.device = "cuda"      # classical methods take the device from the input
    run(method, inp, **params)            # warm-up: CUDA context, cuFFT plans, cuDNN choice
    secs, res = [], None
    torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        res = run(method, inp, **params)
        torch.cuda.synchronize()
        secs.append(time.perf_counter() - t)
    return {"method": method, "shape": list(shape), "params": {k: str(v) for k, v in params.items() if k != "device"},
            "device": res.device, "seconds": round(statistics.median(secs), 3), "all_seconds": [round(s, 3) for s in secs],
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2 ** 20), "flips": res.params.get("tta"),
            "timings": {k: round(float(v), 3) for k, v in res.timings.items()}}


def write_md(res: dict, path: Path) -> None:
    L = ["# NeXtQSM on a GPU: speed and peak GPU memory", "",
         f"Command: `{res['command']}`  ", f"Date: {res['date']}; device: {res['gpu']}; torch {res['torch']}.", "",
         "Synthetic total field, ellipsoid mask, 1 mm; median of the timed runs after one warm-up run;",
         "peak = `torch.cuda.max_memory_allocated` over the timed runs. `nextqsm` = full inference",
         "(background removal + VN, crop to the mask's bounding box, pad to the network's multiple).", "",
         *[f"Note: {n}" for n in res.get("notes", [])], *([""] if res.get("notes") else []),
         "| method | weights | BFR | shape | s (median) | peak GPU MB | stage timings s |", "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        if "error" in r:
            L.append(f"| {r.get('method')} | {r.get('weights', '')} | | {r.get('shape')} | error: {r['error'][:120]} | | |")
            continue
        t = ", ".join(f"{k} {v}" for k, v in r["timings"].items())
        flips = f", {r['flips']} flips" if r.get("flips") else ""   # rows before session 19: 1 flip, not recorded
        L.append(f"| {r['method']} | {r.get('weights', 'shipped')} | {r['params'].get('bfr', '')}{flips} | "
                 f"{'x'.join(map(str, r['shape']))} | {r['seconds']} | {r['peak_gpu_mb']} | {t} |")
    path.write_text("\n".join(L) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="164x205x205,256x256x176")
    ap.add_argument("--weights-dir", nargs="*", default=[None], help="weights folders (default: the shipped ones)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bfr", nargs="+", default=["unet", "vsharp", "lbv"], choices=["unet", "vsharp", "lbv"])
    ap.add_argument("--tgv-shape", default="160x160x160", help="'' to skip TGV")
    ap.add_argument("--out", default=str(HERE / "results_gpu.md"))
    ap.add_argument("--from-json", default=None, help="only rewrite the Markdown from a JSON of an earlier run")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.from_json:
        write_md(json.loads(Path(args.from_json).read_text()), out)
        return 0
    import torch

    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to measure", file=sys.stderr)
        return 2
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",") if s]
    res = {"command": "python benchmarks/bench_gpu.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "gpu": torch.cuda.get_device_name(0),
           "torch": torch.__version__, "host": platform.node(), "rows": []}
    cases = [("nextqsm", s, {"bfr": b, "weights_dir": w}) for w in args.weights_dir for s in shapes
             for b in args.bfr]
    if args.tgv_shape:
        cases.append(("tgv", tuple(int(v) for v in args.tgv_shape.split("x")), {}))
    for method, shape, params in cases:
        w = params.get("weights_dir")
        params = {k: v for k, v in params.items() if v is not None}
        try:
            row = time_case(method, shape, args.repeats, **params)
        except Exception as e:  # keep measuring the other cases
            row = {"method": method, "shape": list(shape), "error": f"{type(e).__name__}: {e}"}
        row["weights"] = Path(w).name if w else ("shipped" if method == "nextqsm" else "")
        res["rows"].append(row)
        print(json.dumps(row), flush=True)
        out.with_suffix(".json").write_text(json.dumps(res, indent=1))
        write_md(res, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
