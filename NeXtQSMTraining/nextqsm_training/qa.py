"""QA sheets (PNG, matplotlib Agg) of hybrid pairs, in the spirit of the NeXtQSM paper's Fig. 2-4:
one row per pair with the source label map, the deformed label map, chi, the local field, the
total field, and the external sources (chi outside the mask, brain outline in white)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nextqsm.io import atomic_path


def _cmap_labels(lab: np.ndarray) -> np.ndarray:
    """Stable random colours per label code (0 -> black)."""
    rng = np.random.default_rng(7)
    lut = rng.uniform(0.15, 1.0, (4096, 3))
    lut[0] = 0
    return lut[np.clip(lab, 0, 4095) % 4096]


def _slice(v: np.ndarray, k: int) -> np.ndarray:
    return np.rot90(v[:, :, k])   # axial slice, anterior up (RAS: i = R-L, j = P-A)


def qa_sheet(pairs: list[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Write a QA sheet for up to 6 pairs (dicts from make_pair, ideally with ``return_labels``)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    pairs = pairs[:6]
    cols = ["source labels (undeformed)", "deformed labels", "chi [ppm]", "local field [ppm]", "total field [ppm]",
            "external chi [ppm]"]
    fig, axes = plt.subplots(len(pairs), len(cols), figsize=(2.6 * len(cols), 2.7 * len(pairs)), squeeze=False)
    for r, p in enumerate(pairs):
        m = p["mask"].astype(bool)
        zs = np.nonzero(m.any(axis=(0, 1)))[0]
        k = int(zs[len(zs) // 2]) if len(zs) else m.shape[2] // 2
        k = int(np.clip(k + (zs[-1] - zs[0]) // 8 if len(zs) else k, 0, m.shape[2] - 1))
        lf = p["local_field"][m]
        lim_l = float(np.percentile(np.abs(lf), 99)) if lf.size else 0.05
        tf = p["total_field"][m]
        lim_t = float(np.percentile(np.abs(tf - np.median(tf)), 99)) if tf.size else 1
        chi_lim = 0.15
        panels = [
            (_cmap_labels(_slice(p["labels_src"], k)) if "labels_src" in p else None, {}),
            (_cmap_labels(_slice(p["labels"], k)) if "labels" in p else None, {}),
            (_slice(p["chi"], k), dict(cmap="gray", vmin=-chi_lim, vmax=chi_lim)),
            (_slice(p["local_field"], k), dict(cmap="gray", vmin=-lim_l, vmax=lim_l)),
            (_slice(np.where(m, p["total_field"] - (np.median(tf) if tf.size else 0), 0), k),
             dict(cmap="RdBu_r", vmin=-lim_t, vmax=lim_t)),
            (_slice(p["chi_external"], k) if "chi_external" in p else None, dict(cmap="magma", vmin=-2.5, vmax=10)),
        ]
        for c, (img, kw) in enumerate(panels):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if img is None:
                ax.set_visible(False)
                continue
            im = ax.imshow(img, interpolation="nearest", **kw)
            if c == 5:
                ax.contour(_slice(m, k).astype(float), levels=[0.5], colors="w", linewidths=0.6)
            if kw:
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
        vs = np.asarray(p["voxel_size"], float)
        b = np.asarray(p["b0_dir"], float)
        axes[r, 0].set_ylabel(f"{p.get('source', '')}\nvox {vs[0]:.2f}x{vs[1]:.2f}x{vs[2]:.2f} mm\n"
                              f"B0 ({b[0]:.2f},{b[1]:.2f},{b[2]:.2f})", fontsize=7)
        axes[r, 0].set_visible(True)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=80)
    finally:
        plt.close(fig)
    return path
