"""Our metrics agree with QSM-CI's scorer (qsm_ci.qsm_eval) on the same arrays."""
from __future__ import annotations

import numpy as np
import pytest

from nextqsm import metrics


@pytest.fixture(scope="module")
def arrays(small_phantom):
    rng = np.random.default_rng(3)
    truth = small_phantom.chi.astype(np.float64)
    recon = 0.8 * truth + 0.01 + rng.normal(0, 0.02, truth.shape)
    return recon, truth, small_phantom.mask, small_phantom.seg


def test_against_qsm_ci(arrays):
    qe = pytest.importorskip("qsm_ci.qsm_eval")
    recon, truth, mask, seg = arrays
    ref = qe.challenge_metrics(recon, truth, mask.astype(np.uint8), seg)
    ours = metrics.challenge_metrics(recon, truth, mask, seg)
    for k_ours, k_ref in [("nrmse", "nrmse"), ("nrmse_detrend", "nrmse_detrend"), ("nrmse_tissue", "nrmse_tissue"),
                          ("nrmse_blood", "nrmse_blood"), ("nrmse_dgm", "nrmse_dgm"), ("hfen", "hfen"),
                          ("xsim", "xsim"), ("correlation", "correlation"), ("dgm_slope_error", "dgm_linearity")]:
        assert ours[k_ours] == pytest.approx(ref[k_ref], rel=1e-6, abs=1e-9), k_ours


def test_metric_sanity(arrays):
    _, truth, mask, seg = arrays
    m = metrics.challenge_metrics(truth, truth, mask, seg)
    assert m["nrmse"] == pytest.approx(0, abs=1e-9) and m["xsim"] == pytest.approx(1.0)
    assert metrics.nrmse(2 * truth, truth, mask) == pytest.approx(100.0, rel=1e-6)
    assert metrics.nrmse_detrend(2 * truth + 1, truth, mask) == pytest.approx(0, abs=1e-6)


def test_xsim_ref_ignores_the_reference_offset(arrays):
    """Raw XSIM (the QSM-CI definition) drops with a constant offset; xsim_ref does not."""
    recon, truth, mask, _ = arrays
    m = mask > 0
    shifted = np.where(m, recon + 0.02, 0.0)
    assert metrics.xsim_ref(shifted, truth, mask) == pytest.approx(metrics.xsim_ref(recon * m, truth, mask), abs=1e-9)
    assert metrics.xsim(shifted, truth, mask) < metrics.xsim(recon * m, truth, mask) - 0.05
    assert metrics.xsim_ref(truth + 0.05 * m, truth, mask) == pytest.approx(1.0)
    assert metrics.challenge_metrics(recon, truth, mask)["xsim_ref"] == pytest.approx(metrics.xsim_ref(recon, truth, mask))
