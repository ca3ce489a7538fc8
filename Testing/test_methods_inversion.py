"""Dipole inversions (L2, iLSQR-style, TV-ADMM) and the classical pipelines on procedural phantoms."""
from __future__ import annotations

import numpy as np
import pytest

from nextqsm import pipeline
from nextqsm.dipole import forward_field
from nextqsm.errors import QSMInputError
from nextqsm.methods.ilsqr import ilsqr
from nextqsm.methods.l2 import l2_inversion, make_grid
from nextqsm.methods.tkd import tkd
from nextqsm.methods.tv import _grad, _grad_adj, tv_admm

from conftest import OBLIQUE_25 as OBLIQUE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def phantom(n=40, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0, 0, 1), seed=0):
    """Piecewise-constant ellipsoids (ppm) in a spherical brain; returns chi, local field, mask, grid mm, R."""
    rng = np.random.default_rng(seed)
    vs = np.asarray(voxel_size, float)
    g = (np.mgrid[:n, :n, :n].astype(np.float32) - n / 2) * vs[:, None, None, None]
    R = 0.36 * n * vs.min()
    brain = np.sqrt((g ** 2).sum(0)) < R
    chi = np.zeros((n,) * 3, np.float32)
    for _ in range(14):
        c = rng.uniform(-0.45 * R, 0.45 * R, 3)
        ax = rng.uniform(0.08 * R, 0.25 * R, 3)
        chi[(((g - c[:, None, None, None]) / ax[:, None, None, None]) ** 2).sum(0) < 1] += rng.uniform(-0.1, 0.15)
    chi *= brain
    return chi, forward_field(chi, voxel_size, b0_dir, pad=n // 2), brain, g, R


def nrmse(x, ref, m):
    a, b = x[m] - x[m].mean(), ref[m] - ref[m].mean()
    return 100.0 * float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_gradient_adjoint_and_grid():
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(5, 6, 7, generator=gen, dtype=torch.float64)
    y = torch.rand(3, 5, 6, 7, generator=gen, dtype=torch.float64)
    vs = (1.0, 1.5, 2.0)
    assert float((_grad(x, vs) * y).sum()) == pytest.approx(float((x * _grad_adj(y, vs)).sum()), rel=1e-10)
    m = np.zeros((30, 30, 30), bool)
    m[5:20, 8:12, 3:29] = True
    grid = make_grid(m, pad=4)
    back = grid.from_grid(grid.to_grid(m.astype(np.float32)))
    assert np.array_equal(back > 0, m)


def test_l2_recovers_phantom_and_beats_tkd():
    chi, local, mask, _, _ = phantom()
    e_tkd = nrmse(tkd(local, mask), chi, mask)
    e_l2 = nrmse(l2_inversion(local, mask, lam=3e-3), chi, mask)
    assert e_l2 < 30.0 and e_l2 < e_tkd, (e_l2, e_tkd)


@pytest.mark.parametrize("vs,b0", [((1.0, 1.0, 1.0), (0, 0, 1)), ((1.0, 1.0, 2.0), OBLIQUE)])
def test_tv_recovers_piecewise_constant_phantom(vs, b0):
    chi, local, mask, _, _ = phantom(40, vs, b0)
    est = tv_admm(local, mask, vs, b0, lam=3e-4, iters=100, device="cpu")
    assert np.all(est[~mask] == 0) and est.dtype == np.float32
    e_tv, e_tkd = nrmse(est, chi, mask), nrmse(tkd(local, mask, vs, b0), chi, mask)
    assert e_tv < 15.0 and e_tv < 0.6 * e_tkd, (e_tv, e_tkd)


def test_tv_weighted_variant():
    chi, local, mask, _, _ = phantom(32)
    mag = np.where(mask, 1.0, 0.2).astype(np.float32)
    est = tv_admm(local, mask, lam=3e-4, iters=80, weighted=True, magnitude=mag, device="cpu")
    assert nrmse(est, chi, mask) < 20.0


def test_tv_beats_tkd_with_noise():
    chi, local, mask, _, _ = phantom(40, seed=1)
    noisy = local + np.random.default_rng(3).normal(0, 0.003, local.shape).astype(np.float32)
    e_tv = nrmse(tv_admm(noisy, mask, lam=1e-3, iters=60, device="cpu"), chi, mask)
    e_tkd = nrmse(tkd(noisy, mask), chi, mask)
    assert e_tv < e_tkd - 10.0, (e_tv, e_tkd)


@pytest.mark.parametrize("vs,b0", [((1.0, 1.0, 1.0), (0, 0, 1)), ((1.0, 1.0, 2.0), OBLIQUE)])
def test_ilsqr_beats_tkd(vs, b0):
    chi, local, mask, _, _ = phantom(40, vs, b0)
    est, steps = ilsqr(local, mask, vs, b0, device="cpu", return_steps=True)
    e_il, e_tkd = nrmse(est, chi, mask), nrmse(tkd(local, mask, vs, b0), chi, mask)
    assert e_il < 30.0 and e_il < e_tkd, (e_il, e_tkd)
    assert steps["lsqr_iters"] >= 1 and set(steps) >= {"chi_lsqr", "chi_fs", "chi_sa"}


def test_device_argument():
    import torch

    chi, local, mask, _, _ = phantom(24)
    if not torch.cuda.is_available():
        with pytest.raises(QSMInputError):
            tv_admm(local, mask, device="cuda", iters=2)
    else:
        a = tv_admm(local, mask, device="cuda", iters=5)
        b = tv_admm(local, mask, device="cpu", iters=5)
        assert np.allclose(a, b, atol=1e-4)


def _total_input(n=40, kind="total"):
    chi, local, mask, g, R = phantom(n)
    b = np.array([0.0, 0.0, 1.0])
    bg = np.zeros(mask.shape)
    d = g - np.array([0, 0, 1.4 * R], np.float32)[:, None, None, None]
    r2 = (d ** 2).sum(0)
    bg += 9.0 * (0.25 * R) ** 3 / 3 * (3 * np.tensordot(b, d, axes=1) ** 2 / r2 - 1) / r2 ** 1.5
    field = local if kind == "local" else (local + bg).astype(np.float32)
    return chi, local, pipeline.QSMInput(field=field, mask=mask, kind=kind, device="cpu")


FAST = {"tkd": {}, "vsharp-l2": {"l2_lam": 3e-3}, "vsharp-tv": {"tv_lam": 3e-4, "tv_iters": 40},
        "pdf-tv": {"pdf_maxiter": 20, "tv_lam": 3e-4, "tv_iters": 40},
        "vsharp-ilsqr": {"ilsqr_maxiter": 20, "ilsqr_sa_maxiter": 20}}


@pytest.mark.parametrize("name", sorted(FAST))
def test_pipelines_return_records(name):
    chi, local, inp = _total_input()
    stages = []
    res = pipeline.run(name, inp, progress=lambda f, s: stages.append((f, s)), **FAST[name])
    assert res.method == name and res.chi.shape == chi.shape and res.chi.dtype == np.float32
    assert res.local_field is not None and res.mask.dtype == bool and not (res.mask & ~inp.mask).any()
    assert np.all(res.chi[~res.mask] == 0)
    bfr = "pdf" if name.startswith("pdf") else "vsharp"
    if bfr == "vsharp":
        assert res.mask.sum() < inp.mask.sum()  # V-SHARP erodes
    assert bfr in res.timings and "total" in res.timings
    assert stages and stages[-1][0] == 1.0 and all(0 <= f <= 1 for f, _ in stages)
    assert nrmse(res.local_field, local, res.mask) < 45.0
    assert nrmse(res.chi, chi, res.mask) < 60.0
    assert res.params and all(k.split("_")[0] in ("vsharp", "pdf", "tkd", "l2", "tv", "ilsqr") for k in res.params)


def test_local_input_skips_background_removal():
    chi, local, inp = _total_input(kind="local")
    res = pipeline.run("tkd", inp)
    assert res.local_field is None and np.array_equal(res.mask, inp.mask)
    assert "vsharp" not in res.timings and "tkd" in res.timings
    assert nrmse(res.chi, chi, inp.mask) < 40.0
    with pytest.raises(QSMInputError):
        pipeline.run("vsharp-l2", inp, l2_typo=1)


def test_device_is_a_parameter_of_every_method():
    """pipeline.run(..., device=...) works for classical methods too (they read it from the input)."""
    chi, f, m, _, _ = phantom(24)
    inp = pipeline.QSMInput(field=f, mask=m, kind="local")
    a = pipeline.run("tkd", inp, device="cpu")
    b = pipeline.run("tkd", inp)
    assert a.device == "cpu" and np.array_equal(a.chi, b.chi)
    with pytest.raises(QSMInputError, match="unknown parameter"):
        pipeline.run("tkd", inp, devices="cpu")
