"""Comparison figures (matplotlib, Agg backend): truth and each method in three planes, with errors."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np


def _planes(vol: np.ndarray, center: tuple[int, int, int]) -> list[np.ndarray]:
    """Axial (k), coronal (j) and sagittal (i) slices through ``center``, displayed with superior up."""
    i, j, k = center
    return [vol[:, :, k].T, vol[:, j, :].T, vol[i, :, :].T]


def comparison_figure(truth: np.ndarray | None, results: Mapping[str, np.ndarray], mask: np.ndarray,
                      path: str | Path, vmin: float = -0.15, vmax: float = 0.25, err: float = 0.1,
                      metrics: Mapping[str, Mapping[str, float]] | None = None) -> Path:
    """Rows: truth then each method; columns: chi in 3 planes, then |error| vs truth in 3 planes (ppm)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import atomic_path

    idx = np.argwhere(mask)
    center = tuple(int(v) for v in (idx.min(0) + idx.max(0)) // 2) if idx.size else tuple(s // 2 for s in mask.shape)
    rows = ([("truth", truth)] if truth is not None else []) + list(results.items())
    ncol = 6 if truth is not None else 3
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.2 * ncol, 2.2 * len(rows) + 0.4), squeeze=False)
    for r, (name, vol) in enumerate(rows):
        v = np.where(mask, vol, 0)
        for c, sl in enumerate(_planes(v, center)):
            ax = axes[r, c]
            im = ax.imshow(sl, cmap="gray", vmin=vmin, vmax=vmax, origin="lower", interpolation="nearest")
            ax.set_xticks([]); ax.set_yticks([])  # noqa: E702
        label = name
        if metrics and name in metrics:
            m = metrics[name]
            label += f"\nNRMSE {m.get('nrmse', float('nan')):.1f}%  XSIM {m.get('xsim', float('nan')):.2f}"
        axes[r, 0].set_ylabel(label, fontsize=8)
        if truth is not None:
            e = np.where(mask, vol - truth, 0)
            for c, sl in enumerate(_planes(e, center)):
                ax = axes[r, 3 + c]
                ime = ax.imshow(sl, cmap="RdBu_r", vmin=-err, vmax=err, origin="lower", interpolation="nearest")
                ax.set_xticks([]); ax.set_yticks([])  # noqa: E702
    titles = ["axial", "coronal", "sagittal"] + (["error axial", "error coronal", "error sagittal"] if truth is not None else [])
    for c, t in enumerate(titles):
        axes[0, c].set_title(t, fontsize=9)
    fig.colorbar(im, ax=axes[:, :3], shrink=0.6, label="chi [ppm]")
    if truth is not None:
        fig.colorbar(ime, ax=axes[:, 3:], shrink=0.6, label="error [ppm]")
    path = Path(path)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=90)
    finally:
        plt.close(fig)
    return path
