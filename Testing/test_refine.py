"""TV refinement of the VN's chi (nextqsm.models.refine, tv_admm's prior term, run_nextqsm(refine=...))."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nextqsm.dipole import dipole_kernel, forward_field  # noqa: E402
from nextqsm.errors import QSMInputError  # noqa: E402
from nextqsm.methods.l2 import make_grid  # noqa: E402
from nextqsm.methods.tv import tv_admm  # noqa: E402
from nextqsm.metrics import nrmse  # noqa: E402
from nextqsm.models.refine import DEFAULT_REFINE, nondipolar_fraction, refine_weight, tv_refine  # noqa: E402
from nextqsm.models.weights import WEIGHTS_DIR, load_manifest  # noqa: E402
from nextqsm.pipeline import QSMInput, run  # noqa: E402


def blobs(shape=(24, 24, 24), seed=0):
    """Piece-wise constant chi (ppm) of a few boxes in a spherical mask, and its local field (ppm)."""
    rng = np.random.default_rng(seed)
    ii = np.indices(shape).astype(np.float32)
    c = (np.array(shape, np.float32) - 1) / 2
    mask = ((ii - c[:, None, None, None]) ** 2).sum(0) < (0.42 * shape[0]) ** 2
    chi = np.zeros(shape, np.float32)
    for _ in range(6):
        lo = rng.integers(4, shape[0] - 10, 3)
        sz = rng.integers(3, 7, 3)
        chi[lo[0]:lo[0] + sz[0], lo[1]:lo[1] + sz[1], lo[2]:lo[2] + sz[2]] += rng.uniform(-0.1, 0.15)
    chi *= mask
    field = forward_field(chi, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0)).astype(np.float32) * mask
    return chi, field, mask


def test_tv_prior_term_is_the_closed_form_without_tv():
    """With a vanishing TV weight the ADMM's fixed point is argmin 1/2||D chi - f||^2 + mu/2||chi - p||^2
    on tv_admm's own padded grid, (D F + mu P) / (D^2 + mu) per frequency; on the magic cone and at k=0
    chi follows the prior; with mu = 0 it is the plain TV inversion."""
    chi, f, m = blobs()
    prior = (chi + 0.02 * np.random.default_rng(1).normal(size=chi.shape).astype(np.float32)) * m
    mu = 0.05
    y = tv_admm(f, m, lam=1e-9, prior=prior, prior_weight=mu, iters=5, device="cpu")
    grid = make_grid(m, 12)
    D = dipole_kernel(grid.shape, (1, 1, 1), (0, 0, 1))
    F = np.fft.fftn(grid.to_grid(np.where(m, f, 0)))
    P = np.fft.fftn(grid.to_grid(prior))
    ref = np.where(m, grid.from_grid(np.fft.ifftn((D * F + mu * P) / (D * D + mu)).real), 0)
    assert np.abs(y - ref).max() < 1e-4 * np.abs(ref).max()
    # the prior changes the answer, and mu = 0 gives the prior-free TV
    a = tv_admm(f, m, lam=1e-4, prior=prior, prior_weight=0.0, device="cpu")
    b = tv_admm(f, m, lam=1e-4, device="cpu")
    assert np.array_equal(a, b)
    assert not np.allclose(tv_admm(f, m, lam=1e-4, prior=prior, prior_weight=mu, device="cpu"), b, atol=1e-6)
    with pytest.raises(ValueError, match="prior_weight"):
        tv_admm(f, m, prior=prior, prior_weight=-1.0)


def test_nondipolar_fraction_and_weight():
    """c is near 0 for a dipolar field, ~1 for white noise, grows with noise and is scale-free; the weight
    l(c) = coef * clip(c)^power."""
    chi, f, m = blobs((32, 32, 32))
    vs, b0 = (1, 1, 1), (0, 0, 1)
    c0 = nondipolar_fraction(f, m, vs, b0)
    noise = np.random.default_rng(2).normal(size=f.shape).astype(np.float32)
    cs = [nondipolar_fraction(f + a * f[m].std() * noise * m, m, vs, b0) for a in (0.3, 1.0, 3.0)]
    assert c0 < 0.2 and cs[0] > c0 and cs[0] < cs[1] < cs[2] and 0.6 < cs[2] < 1.4
    assert nondipolar_fraction(3.0 * f, m, vs, b0) == pytest.approx(c0, rel=1e-4)
    assert refine_weight(0.2, 0.3, 1.0, (0.05, 0.5)) == pytest.approx(0.06)
    assert refine_weight(0.01, 0.3, 0.5, (0.05, 0.5)) == pytest.approx(0.3 * 0.05 ** 0.5)
    assert refine_weight(2.0, 0.3, 1.0, (0.05, 0.5)) == pytest.approx(0.15)


def test_tv_refine_is_scale_aware_and_helps_on_a_noisy_field():
    """tv_refine(2f, 2p) = 2 tv_refine(f, p) (lam follows the field's RMS); on a noisy field it brings a
    poor prior (the field-blurred truth) closer to the truth than the prior itself."""
    chi, f, m = blobs((32, 32, 32))
    rng = np.random.default_rng(3)
    fn = (f + 0.5 * f[m].std() * rng.normal(size=f.shape).astype(np.float32)) * m
    from scipy import ndimage as ndi

    prior = ndi.gaussian_filter(chi, 1.5).astype(np.float32) * m
    y, lam = tv_refine(fn, m, prior, (1, 1, 1), (0, 0, 1), l=0.05, mu=0.03, device="cpu")
    y2, lam2 = tv_refine(2 * fn, m, 2 * prior, (1, 1, 1), (0, 0, 1), l=0.05, mu=0.03, device="cpu")
    assert lam2 == pytest.approx(2 * lam, rel=1e-6)
    assert np.abs(y2 - 2 * y).max() < 1e-3 * np.abs(y).max()
    assert nrmse(y, chi, m) < nrmse(prior, chi, m) - 5.0
    with pytest.raises(ValueError):
        tv_refine(np.zeros_like(fn), m, prior, (1, 1, 1), (0, 0, 1), l=0.05, mu=0.03)


def test_pipeline_refines_user_local_fields_by_default(tmp_path):
    """Shipped weights: a local field gets the TV refinement with l = coef * c^power from the manifest (the
    VN's own consistency step off); a total field does not unless asked; refine=False gives the VN with its
    consistency step; refine_l fixes the weight; bad values are rejected with the parameter's name."""
    cfg = load_manifest(WEIGHTS_DIR)["defaults"]["refine_local"]
    chi, f, m = blobs((32, 32, 32))
    fn = (f + 0.3 * f[m].std() * np.random.default_rng(4).normal(size=f.shape).astype(np.float32)) * m
    inp = QSMInput(field=fn, mask=m, kind="local", device="cpu")
    r = run("nextqsm", inp)
    rp = r.params["refine"]
    c = nondipolar_fraction(fn, m, (1, 1, 1), (0, 0, 1))
    assert rp["method"] == "tv" and rp["c"] == pytest.approx(c, abs=1e-3)
    assert rp["l"] == pytest.approx(refine_weight(c, cfg["coef"], cfg["power"], cfg["c_range"]), rel=1e-3)
    assert r.params["dc_mu"] == 0.0 and "refine" in r.timings and rp["mu"] == cfg["mu"]
    off = run("nextqsm", inp, refine=False)
    assert "refine" not in off.params and off.params["dc_mu"] > 0
    assert not np.allclose(off.chi, r.chi, atol=1e-5)
    fixed = run("nextqsm", inp, refine_l=0.01)
    assert fixed.params["refine"]["l"] == 0.01
    # a total field: off by default, on when asked (the VN's rim outside LBV's / V-SHARP's mask is kept)
    tot = QSMInput(field=fn, mask=m, kind="total", device="cpu")
    assert "refine" not in run("nextqsm", tot).params
    forced = run("nextqsm", tot, refine=True)
    assert forced.params["refine"]["method"] == "tv" and forced.params["bfr"] == "lbv"   # 1 mm voxels: LBV
    for bad in ({"refine": "yes"}, {"refine": 2}, {"refine_l": -1.0}, {"refine_l": True}, {"refine_l": float("nan")}):
        with pytest.raises(QSMInputError, match=next(iter(bad))):
            run("nextqsm", inp, **bad)
    # weights without the manifest entry: no refinement unless forced
    wd = tmp_path / "w"
    shutil.copytree(WEIGHTS_DIR, wd)
    man = json.loads((wd / "manifest.json").read_text())
    del man["defaults"]["refine_local"]
    (wd / "manifest.json").write_text(json.dumps(man))
    assert "refine" not in run("nextqsm", inp, weights_dir=wd).params
    forced_rp = run("nextqsm", inp, weights_dir=wd, refine=True).params["refine"]
    assert forced_rp["method"] == "tv" and forced_rp["mu"] == DEFAULT_REFINE["mu"]
    assert forced_rp["l"] == pytest.approx(refine_weight(c, DEFAULT_REFINE["coef"], DEFAULT_REFINE["power"],
                                                         DEFAULT_REFINE["c_range"]), rel=1e-3)
    # the shipped manifest carries the same fitted values as the code's fallback
    assert {k: cfg[k] for k in ("coef", "power", "c_range", "mu")} == \
        {k: DEFAULT_REFINE[k] for k in ("coef", "power", "c_range", "mu")}
