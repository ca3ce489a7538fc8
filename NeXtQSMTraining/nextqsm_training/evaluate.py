"""Evaluation helpers: challenge metrics of a reconstruction against the truth.

Uses :mod:`nextqsm.metrics` (the challenge definitions, as QSM-CI implements them) when it is
importable, else a local demeaned NRMSE (XSIM then reported as NaN).
"""
from __future__ import annotations

import math

import numpy as np


def nrmse_local(x: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    """Demeaned NRMSE in % inside ``mask``."""
    m = np.asarray(mask) > 0
    a = x[m].astype(np.float64) - x[m].mean()
    r = ref[m].astype(np.float64) - ref[m].mean()
    nr = float(np.linalg.norm(r))
    return 100.0 * float(np.linalg.norm(a - r)) / nr if nr > 0 else math.nan


def score(x: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> dict:
    """{'nrmse': demeaned NRMSE %, 'xsim': XSIM, 'xsim_ref': XSIM of the mean-referenced maps} of ``x``
    against ``ref`` inside ``mask`` (ppm arrays)."""
    try:
        from nextqsm import metrics
    except ImportError:
        return {"nrmse": nrmse_local(x, ref, mask), "xsim": math.nan, "xsim_ref": math.nan}
    return {"nrmse": float(metrics.nrmse(x, ref, mask)), "xsim": float(metrics.xsim(x, ref, mask)),
            "xsim_ref": float(metrics.xsim_ref(x, ref, mask))}
