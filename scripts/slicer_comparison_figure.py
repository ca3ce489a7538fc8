#!/usr/bin/env python3
"""The README's Slicer comparison figure, made through the module's own logic (slicer-core, no GUI).

Sample (simulated head, wrapped phase) -> MRML nodes -> ``QSMLogic.run`` (worker subprocess) ->
chi nodes -> difference node and ROI statistics -> PNG + JSON. This is the path a clinician's
click takes in the NeXtQSM module, minus the Qt widgets.

    python scripts/slicer_comparison_figure.py --methods tgv tkd --out Resources/Screenshots
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=None, help="methods (default: nextqsm and tgv when available)")
    ap.add_argument("--out", default="Resources/Screenshots", help="output folder")
    ap.add_argument("--shape", nargs=3, type=int, default=[96, 96, 84])
    ap.add_argument("--voxel", type=float, default=2.2, help="isotropic voxel size [mm]")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--params", default="{}", help='JSON {method: {param: value}}, e.g. {"tgv": {"iterations": 300}}')
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import slicer

    from nextqsm import mrml
    from nextqsm.pipeline import available_methods
    from nextqsm.sampledata import load_sample_into_scene
    from nextqsm.slicer_logic import QSMLogic, method_label

    avail = available_methods()
    methods = args.methods or [m for m in ("nextqsm", "tgv") if m in avail]
    scene = slicer.vtkMRMLScene()
    nodes = load_sample_into_scene(scene, shape=tuple(args.shape), voxel_size=(args.voxel,) * 3)
    logic = QSMLogic(scene)
    meta = logic.metadata_defaults(nodes["phase"])
    t0 = time.perf_counter()
    out = logic.run(nodes["phase"], nodes["mask"], nodes["magnitude"], methods=methods, phase_units="wrapped_rad",
                    te_ms=meta["te_ms"], b0_t=meta["b0_t"], device=args.device, method_params=json.loads(args.params),
                    progress=lambda f, s: print(f"{100 * f:5.1f}% {s}", flush=True))
    wall = time.perf_counter() - t0
    diff = logic.difference(out.chi[methods[0]], out.chi[methods[-1]], "difference") if len(methods) > 1 else None
    rows = logic.roi_rows({"truth": nodes["chi_true"], **out.chi}, nodes["segmentation"], nodes["phase"])
    mask = mrml.array_from_volume(nodes["mask"]) > 0
    truth = mrml.array_from_volume(nodes["chi_true"])
    nrmse = {}
    for m in methods:
        a = mrml.array_from_volume(out.chi[m])
        x, t = a[mask] - a[mask].mean(), truth[mask] - truth[mask].mean()
        nrmse[m] = float(100 * np.linalg.norm(x - t) / np.linalg.norm(t))

    panels = [("true chi", truth)] + [(method_label(m), mrml.array_from_volume(n)) for m, n in out.chi.items()]
    if diff is not None:
        panels.append((f"{method_label(methods[0])} - {method_label(methods[-1])}", mrml.array_from_volume(diff)))
    k = truth.shape[2] // 2 + 4
    fig = plt.figure(figsize=(3.0 * len(panels), 6.4))
    gs = fig.add_gridspec(2, len(panels), height_ratios=[1.1, 1])
    for i, (title, arr) in enumerate(panels):
        ax = fig.add_subplot(gs[0, i])
        lim = (-0.1, 0.1) if " - " in title else (-0.15, 0.25)
        ax.imshow(np.where(mask[:, :, k], arr[:, :, k], 0).T, cmap="gray", vmin=lim[0], vmax=lim[1], origin="lower")
        sub = f"NRMSE {nrmse[m]:.0f} %" if (m := next((mm for mm in methods if method_label(mm) == title), None)) else ""
        ax.set_title(f"{title}\n{sub}" if sub else title, fontsize=10)
        ax.set_axis_off()
    ax = fig.add_subplot(gs[1, :])
    names = [r["ROI"] for r in rows]
    cols = ["truth"] + [method_label(m) for m in methods]
    w = 0.8 / len(cols)
    for j, c in enumerate(cols):
        ax.bar(np.arange(len(names)) + (j - (len(cols) - 1) / 2) * w, [r[f"{c} mean"] for r in rows], w, label=c,
               yerr=[r[f"{c} SD"] for r in rows], capsize=1.5, error_kw={"lw": 0.6})
    ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("mean chi per ROI [ppm]")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=8, ncol=len(cols))
    fig.suptitle(f"NeXtQSM module logic, simulated head: wrapped phase, TE {meta['te_ms'][0]:g} ms, {meta['b0_t']:g} T,\n"
                 f"{'x'.join(map(str, args.shape))} voxels of {args.voxel} mm; chi window -0.15..0.25 ppm, "
                 f"difference -0.1..0.1 ppm", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    fig.savefig(outdir / "comparison.png", dpi=90)
    (outdir / "comparison.json").write_text(json.dumps(
        {"methods": methods, "nrmse_percent_vs_truth_in_mask": nrmse, "wall_s": wall, "device": out.device,
         "timings_s": out.timings, "roi": rows, "command": "python scripts/slicer_comparison_figure.py "
         + shlex.join(argv if argv is not None else sys.argv[1:])}, indent=2))
    print(json.dumps({"nrmse": nrmse, "wall_s": round(wall, 1), "device": out.device}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
