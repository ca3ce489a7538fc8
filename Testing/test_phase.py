"""Phase handling: units, unwrapping, multi-echo field fit, brain mask, loading (4D / per echo / sidecars / params)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nextqsm.dipole import forward_field
from nextqsm.errors import QSMInputError
from nextqsm.methods.brainmask import brain_mask, mask_or_given
from nextqsm.methods.echofit import fit_total_field
from nextqsm.methods.unwrap import laplacian_unwrap, region_unwrap, unwrap, wrap
from nextqsm.phase import load_phase_inputs, phase_to_radians, phase_to_total_field, read_params_json
from nextqsm.units import ppm_to_rad

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "romeo_small_test_phase"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared test data missing: {DATA}")


def head_field(n=48, seed=0):
    """Total field [ppm] of blobs in an ellipsoidal brain plus an air-like source outside; brain mask."""
    rng = np.random.default_rng(seed)
    c = np.stack(np.meshgrid(*[np.arange(n) - n / 2 + 0.5] * 3, indexing="ij"))

    def ell(cen, rad):
        return sum(((c[a] - cen[a]) / rad[a]) ** 2 for a in range(3)) <= 1

    brain = ell((0, 0, 0), (0.36 * n, 0.30 * n, 0.30 * n))
    chi = np.zeros((n,) * 3, np.float32)
    for _ in range(10):
        chi[ell(rng.uniform(-0.2 * n, 0.2 * n, 3), rng.uniform(0.04 * n, 0.09 * n, 3)) & brain] += rng.uniform(-0.1, 0.2)
    chi[ell((0.0, 0.40 * n, 0.1 * n), (0.12 * n, 0.06 * n, 0.08 * n))] = 9.0
    return forward_field(chi, (1, 1, 1), (0, 0, 1)), brain


def multi_echo(field, brain, tes, b0=3.0, snr=100.0, seed=0, sign=1):
    """Wrapped phase and magnitude (i, j, k, echo): T2* 40 ms, smooth coil offset, complex noise at peak SNR."""
    rng = np.random.default_rng(seed)
    n = field.shape[0]
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n)] * 3, indexing="ij"))
    offset = 0.8 * g[0] + 0.5 * g[1] ** 2 - 1.0
    mag0 = np.where(brain, 1.0, 0.05)
    ph, mg = [], []
    for t in tes:
        z = mag0 * np.exp(-t / 0.04) * np.exp(1j * sign * (ppm_to_rad(field, t, b0) + offset))
        z = z + (rng.normal(size=field.shape) + 1j * rng.normal(size=field.shape)) / snr
        ph.append(np.angle(z))
        mg.append(np.abs(z))
    return np.stack(ph, -1).astype(np.float32), np.stack(mg, -1).astype(np.float32)


def rel_err(x, ref, m):
    return float(100 * np.linalg.norm(x[m] - ref[m]) / np.linalg.norm(ref[m]))


# ----------------------------------------------------------------------------- units
def test_phase_units():
    rad = np.linspace(-np.pi, np.pi - 0.01, 100).reshape(10, 10, 1)
    out, rule = phase_to_radians(rad, "auto")
    assert np.allclose(out, rad, atol=1e-6) and "radians" in rule
    siemens = np.round(rad / np.pi * 4096).clip(-4096, 4095)
    out, rule = phase_to_radians(siemens, "auto")
    assert "Siemens" in rule and np.allclose(out, rad, atol=2e-3)
    au = rad * 1e-3  # arbitrary units: min/max rule when asked for integers
    out, rule = phase_to_radians(au, "integer")
    assert "min/max" in rule and out.min() == pytest.approx(-np.pi) and out.max() == pytest.approx(np.pi)
    with pytest.raises(QSMInputError):
        phase_to_radians(np.ones((3, 3, 3)), "integer")


# ----------------------------------------------------------------------------- unwrapping
def test_unwrappers_recover_smooth_phase():
    n = 40
    g = np.stack(np.meshgrid(*[np.arange(n) - n / 2] * 3, indexing="ij"))
    true = 0.02 * g[0] ** 2 + 0.3 * g[1] - 0.01 * g[2] ** 2 + 1.0  # ~20 rad range, many wraps
    m = (g ** 2).sum(0) < (0.45 * n) ** 2
    w = wrap(true)
    for u in (region_unwrap(w, m), laplacian_unwrap(w, mask=m, congruent=True)):
        k = (u - true)[m] / (2 * np.pi)  # exact up to one global multiple of 2 pi
        assert np.allclose(k, np.round(k[0]), atol=1e-3)
    # plain Laplacian unwrapping is not congruent: it is right up to a smooth function whose
    # Laplacian is constant (the FFT solve drops the mean Laplacian of the box)
    from scipy import ndimage

    from nextqsm.methods.tgv import laplacian

    d = laplacian_unwrap(w, mask=m) - true
    inner = ndimage.binary_erosion(m, iterations=3)
    assert np.std(laplacian(np.where(m, d, 0))[inner]) < 0.1 * np.abs(laplacian(true)[inner]).max()


def test_unwrap_handles_nan_and_unknown_method():
    p = wrap(np.linspace(0, 20, 30 ** 3).reshape(30, 30, 30)).astype(np.float32)
    p[5, 5, 5] = np.nan
    for method in ("region", "laplacian"):
        u = unwrap(p, method, np.ones(p.shape, bool))
        assert np.isfinite(u).all() and u[5, 5, 5] == 0
    with pytest.raises(QSMInputError):
        unwrap(p, "magic")


@needs_data
def test_real_romeo_crops_run():
    import nibabel as nib

    ph = nib.load(str(DATA / "small_Phase.nii.gz")).get_fdata(dtype=np.float32)
    mag = nib.load(str(DATA / "small_Mag.nii.gz")).get_fdata(dtype=np.float32)
    rad, rule = phase_to_radians(ph, "integer")  # arbitrary units: ROMEO's min/max rule
    assert "min/max" in rule
    field, mask, info = phase_to_total_field(rad, mag, [0.004, 0.008, 0.012], 3.0)
    assert field.shape == ph.shape[:3] and np.isfinite(field).all() and mask.sum() > 1000
    assert info["mask_source"] == "magnitude"
    nan = nib.load(str(DATA / "phase_with_nan.nii.gz")).get_fdata(dtype=np.float32)
    f2, m2, _ = phase_to_total_field(phase_to_radians(nan, "rad")[0], None, [0.005, 0.010], 3.0,
                                     mask=np.ones(nan.shape[:3], bool))
    assert np.isfinite(f2).all() and not m2[np.isnan(nan).any(axis=3)].any()


# ----------------------------------------------------------------------------- echo fit
@pytest.mark.parametrize("offset", ["mcpc3ds", "fit"])
def test_multi_echo_fit_peak_snr_100(offset):
    field, brain = head_field(48)
    tes = [0.004, 0.008, 0.012, 0.016, 0.020]
    assert np.abs(ppm_to_rad(field, tes[-1], 3.0)[brain]).max() > 2 * np.pi  # wraps in time and space
    ph, mag = multi_echo(field, brain, tes)
    est, info = fit_total_field(ph, tes, 3.0, brain, mag, offset=offset)
    # issue 3 bar: <= 5 % inside the mask (measured ~2.3 % mcpc3ds, ~2.7 % fit at 64^3)
    assert rel_err(est, field, brain) < 5.0
    assert info["fit_residual_rad"].shape == field.shape


def test_phase_sign_option():
    field, brain = head_field(40, seed=3)
    tes = [0.005, 0.010, 0.015]
    ph, mag = multi_echo(field, brain, tes, sign=-1)
    good, _ = fit_total_field(ph, tes, 3.0, brain, mag, sign=-1)
    bad, _ = fit_total_field(ph, tes, 3.0, brain, mag, sign=1)
    assert rel_err(good, field, brain) < 10.0 and rel_err(-bad, field, brain) < 10.0
    with pytest.raises(QSMInputError):
        fit_total_field(ph, tes[:2], 3.0, brain, mag)


# ----------------------------------------------------------------------------- mask
def test_brain_mask_from_magnitude_and_given_wins():
    n = 48
    g = np.stack(np.meshgrid(*[np.arange(n) - n / 2] * 3, indexing="ij"))
    r = np.sqrt((g ** 2).sum(0))
    brain = r < 15
    rng = np.random.default_rng(0)
    mag = np.where(brain, 1.0, 0.0) + np.where((r > 18) & (r < 20), 0.8, 0.0)  # brain + detached "scalp"
    mag[(np.abs(g[0]) < 2) & (np.abs(g[1]) < 2) & (np.abs(g[2]) < 2)] = 0.02  # a hole (dark nucleus)
    mag = np.abs(mag + rng.normal(scale=0.03, size=mag.shape))
    m = brain_mask(mag)
    dice = 2 * (m & brain).sum() / (m.sum() + brain.sum())
    assert dice > 0.95 and m[n // 2, n // 2, n // 2]  # hole filled, scalp removed
    given = np.zeros_like(brain)
    given[10:20, 10:20, 10:20] = True
    out, src = mask_or_given(given, mag)
    assert src == "given" and np.array_equal(out, given)
    with pytest.raises(QSMInputError):
        mask_or_given(None, None)


# ----------------------------------------------------------------------------- loading
def _save(arr, path, affine=None, sidecar=None):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.asarray(arr, np.float32), np.diag([1.0, 1.0, 1.5, 1.0]) if affine is None else affine),
             str(path))
    if sidecar is not None:
        Path(str(path).replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))


def test_load_per_echo_files_with_sidecars_and_params(tmp_path):
    ph = np.random.default_rng(0).uniform(-np.pi, np.pi, (8, 9, 10, 3))
    files = []
    for e in (3, 1, 2):  # given out of order: sorted by echo-N
        f = tmp_path / f"sub-01_echo-{e}_part-phase_MEGRE.nii.gz"
        _save(ph[..., e - 1], f, sidecar={"EchoTime": 0.005 * e, "MagneticFieldStrength": 2.89})
        files.append(f)
    inp = load_phase_inputs(files)
    assert inp.tes_s == pytest.approx([0.005, 0.010, 0.015]) and inp.b0_t == pytest.approx(2.89)
    assert np.allclose(inp.phase, ph, atol=1e-6) and inp.voxel_size == pytest.approx((1, 1, 1.5))
    assert inp.info["te_source"] == "BIDS sidecar" and inp.b0_dir == pytest.approx((0, 0, 1))
    # explicit values and params.json win over the sidecars; TE in ms accepted
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"TE": [0.004, 0.008, 0.012], "B0": 7, "B0_dir": [0, 1, 0], "voxel_size": [1, 1, 1]}))
    assert read_params_json(params)["B0"] == 7
    inp = load_phase_inputs(files, params_path=params)
    assert inp.tes_s == pytest.approx([0.004, 0.008, 0.012]) and inp.b0_t == 7 and inp.b0_dir == pytest.approx((0, 1, 0))
    inp = load_phase_inputs(files, te_s=[4, 8, 12], b0_t=3, params_path=params)
    assert inp.tes_s == pytest.approx([0.004, 0.008, 0.012]) and inp.b0_t == 3
    # one 4D file; missing TE is a clear error
    f4 = tmp_path / "phase4d.nii.gz"
    _save(ph, f4)
    with pytest.raises(QSMInputError, match="echo times"):
        load_phase_inputs(f4, b0_t=3)
    with pytest.raises(QSMInputError, match="3 phase echo"):
        load_phase_inputs(f4, te_s=[0.01, 0.02], b0_t=3)
    assert load_phase_inputs(f4, te_s=[0.01, 0.02, 0.03], b0_t=3).phase.shape == (8, 9, 10, 3)
