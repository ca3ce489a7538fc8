"""ROI statistics of chi maps: mean and SD per label (segment) per method. Pure numpy.

The Slicer side turns labelmaps/segmentations into a label array with
``nextqsm.mrml.label_array`` and the rows into a table/plot with ``nextqsm.mrml``.
"""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from .errors import QSMInputError


def roi_statistics(chi_by_method: Mapping[str, np.ndarray], labels: np.ndarray,
                   names: Optional[Mapping[int, str]] = None, mask: Optional[np.ndarray] = None) -> list[dict]:
    """One row per label: ``{"ROI", "label", "voxels", "<method> mean", "<method> SD", ...}``.

    chi arrays [ppm] and ``labels`` (int) share one (i, j, k) grid; label 0 is background.
    ``mask`` (optional) restricts the statistics to the brain mask used for QSM.
    SD is the population standard deviation (ddof=0). Empty ROIs give NaN.
    """
    labels = np.asarray(labels)
    for m, chi in chi_by_method.items():
        if np.asarray(chi).shape != labels.shape:
            raise QSMInputError(f"chi ({m})", f"shape {np.asarray(chi).shape} differs from the label shape {labels.shape}",
                                "compute the statistics on the input grid")
    names = dict(names or {})
    ids = [int(v) for v in np.unique(labels) if v != 0]
    ids = sorted(set(ids) | {k for k in names if k != 0})
    rows = []
    for lab in ids:
        sel = labels == lab
        if mask is not None:
            sel &= np.asarray(mask) > 0
        row = {"ROI": names.get(lab, f"label {lab}"), "label": float(lab), "voxels": float(sel.sum())}
        for m, chi in chi_by_method.items():
            v = np.asarray(chi, dtype=np.float64)[sel]
            row[f"{m} mean"] = float(v.mean()) if v.size else float("nan")
            row[f"{m} SD"] = float(v.std()) if v.size else float("nan")
        rows.append(row)
    return rows


def mean_columns(methods) -> list[str]:
    """Names of the mean columns for ``methods`` (the bars of the ROI plot)."""
    return [f"{m} mean" for m in methods]
