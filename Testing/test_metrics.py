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


def test_source_metrics_moment(small_phantom):
    """The truth keeps its calcification's moment and contrast exactly; a source shrunk to half keeps half of both; a
    constant offset changes neither; a 1-voxel blur keeps the moment but lowers the contrast; an unknown label is an
    error."""
    from scipy import ndimage as ndi

    truth = small_phantom.chi.astype(np.float64)
    seg, mask = small_phantom.seg, small_phantom.mask
    assert (seg == 16).any()
    m = metrics.source_metrics(truth, truth, seg, mask)
    assert m["moment"] == pytest.approx(1.0) and m["streak"] == pytest.approx(0.0, abs=1e-12)
    assert m["mean"] == pytest.approx(m["truth_mean"])
    core = seg == 16
    cube = np.ones((3, 3, 3), bool)
    shell = ndi.binary_dilation(core, cube, iterations=4) & ~ndi.binary_dilation(core, cube) & mask
    bg = np.median(truth[shell])
    half = np.where(core, bg + 0.5 * (truth - bg), truth)
    h = metrics.source_metrics(half, truth, seg, mask)
    assert h["moment"] == pytest.approx(0.5, rel=1e-9) and h["contrast"] == pytest.approx(0.5, rel=1e-9)
    off = metrics.source_metrics(truth + 0.1, truth, seg, mask)
    assert off["moment"] == pytest.approx(1.0) and off["contrast"] == pytest.approx(1.0)
    src = np.where(core, truth - bg, 0.0)
    blurred = truth - src + ndi.uniform_filter(src, 3)          # spreads the source by 1 voxel, keeps its sum
    b = metrics.source_metrics(blurred, truth, seg, mask)
    assert b["moment"] == pytest.approx(1.0, rel=1e-6) and b["contrast"] < 0.9   # blur keeps the moment, not the peak
    with pytest.raises(ValueError, match="label 99"):
        metrics.source_metrics(truth, truth, seg, mask, label=99)
