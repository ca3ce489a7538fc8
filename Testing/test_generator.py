"""Hybrid training-data generator: determinism, physics consistency, external sources, statistics,
dataset/cache/CLI. Small grids (32-64) so the whole file runs in well under a minute on 2 cores."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nextqsm.dipole import forward_field
from nextqsm_training import deform, external, labels, label_sources, simulate, susceptibility
from nextqsm_training.labels import Tissue

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SYNTHSEG = DATA / "synthseg_training_label_maps"
needs_synthseg = pytest.mark.skipif(not (SYNTHSEG / "training_seg_13.nii.gz").exists(),
                                    reason=f"SynthSeg label maps not found in {SYNTHSEG}")

PROC = "procedural:0"


def nrmse(a, ref, m):
    return float(np.linalg.norm((a - ref)[m]) / np.linalg.norm(ref[m]))


@pytest.fixture(scope="module")
def pair():
    # tilted B0 and anisotropic voxels always on: the consistency checks must hold for them
    return simulate.make_pair(5, size=48, source=PROC, return_labels=True, smooth_field=(0.0, 0.0),
                              b0_tilt_deg=(1.0, 25.0), anisotropy=(1.0, 0.8, 1.25))


def test_shapes_dtypes(pair):
    for k in ("chi", "local_field", "total_field", "chi_external"):
        assert pair[k].shape == (48, 48, 48) and pair[k].dtype == np.float32, k
        assert np.isfinite(pair[k]).all(), k
    assert pair["mask"].dtype == np.uint8 and set(np.unique(pair["mask"])) <= {0, 1}
    assert pair["voxel_size"].shape == (3,) and pair["b0_dir"].shape == (3,)
    assert abs(np.linalg.norm(pair["b0_dir"]) - 1) < 1e-5
    assert pair["b0_dir"][2] < 0.9999           # tilted
    assert 0.03 < pair["mask"].mean() < 0.6
    m = pair["mask"].astype(bool)
    for k in ("chi", "local_field", "total_field"):
        assert np.all(pair[k][~m] == 0), f"{k} not masked"


def test_determinism():
    a = simulate.make_pair(11, size=32, source=PROC)
    b = simulate.make_pair(11, size=32, source=PROC)
    c = simulate.make_pair(12, size=32, source=PROC)
    for k in ("chi", "local_field", "total_field", "mask", "voxel_size", "b0_dir"):
        assert np.array_equal(a[k], b[k]), k
    assert not np.array_equal(a["chi"], c["chi"])


def test_local_field_matches_independent_forward_model(pair):
    m = pair["mask"].astype(bool)
    ref = forward_field(pair["chi"], pair["voxel_size"], pair["b0_dir"])   # core numpy, full FFT, pad n/4
    assert nrmse(pair["local_field"], ref, m) < 0.02


def test_half_kernel_equals_core_kernel():
    from nextqsm.dipole import dipole_kernel

    sh, vs, b = (20, 18, 16), (1.0, 1.2, 0.9), (0.2, -0.3, 0.93)
    h = simulate.half_kernel(sh, vs, b).numpy()
    d = dipole_kernel(sh, vs, b)
    assert np.allclose(h[:, :, 1:8], d[:, :, 1:8], atol=1e-6)
    x = np.random.default_rng(0).standard_normal(sh).astype(np.float32)
    full = np.fft.ifftn(np.fft.fftn(x) * d).real
    half = torch.fft.irfftn(torch.fft.rfftn(torch.from_numpy(x)) * torch.from_numpy(h), s=sh).numpy()
    assert np.allclose(full, half, atol=1e-5)


def test_external_sources_never_touch_the_brain(pair):
    m = pair["mask"].astype(bool)
    assert np.all(pair["chi_external"][m] == 0)
    # the random ellipsoids respect the keep-out region exactly
    keep = torch.zeros((40, 40, 40), dtype=torch.bool)
    keep[10:30, 8:32, 12:28] = True
    ext = torch.full((40, 40, 40), float("nan"))
    n = external.random_ellipsoids(ext, keep, (1.0, 1.0, 1.0), np.random.default_rng(0), n=100)
    assert n == 100
    painted = ~torch.isnan(ext)
    assert not painted[keep].any()
    assert painted.float().mean() > 0.3            # they do fill the space around
    vals = ext[painted]
    assert (vals > 5).float().mean() > 0.6          # mostly air-like (~9.2 ppm)


def test_external_sources_when_almost_everything_is_keep_out():
    """A fine-voxel patch inside the brain leaves (almost) no room: no sources, no crash."""
    keep = torch.ones((32, 32, 32), dtype=torch.bool)
    keep[0, 0, 0] = False                           # one free voxel: random centres miss it
    ext = torch.full((32, 32, 32), float("nan"))
    n = external.random_ellipsoids(ext, keep, (1.0, 1.0, 1.0), np.random.default_rng(0), n=80)
    assert n == 0 and torch.isnan(ext).all()


def test_total_is_local_plus_harmonic_background(pair):
    m = pair["mask"].astype(bool)
    bg = pair["total_field"] - pair["local_field"]
    # the external sources fill the FOV up to its edges, so compare with the same zero padding
    ref = forward_field(pair["chi_external"], pair["voxel_size"], pair["b0_dir"], pad=pair["pad"]) * m
    assert nrmse(bg, ref, m) < 0.01
    # the background is harmonic inside the brain: relative to its size, its (discrete) Laplacian is
    # tiny compared with the local field's (which carries the dipole sources)
    inner = external.erode(torch.from_numpy(m), 3).numpy()

    vs = pair["voxel_size"].astype(np.float64)

    def lap(f):   # physical Laplacian (anisotropic voxels)
        f = f.astype(np.float64)
        return sum((np.roll(f, 1, a) + np.roll(f, -1, a) - 2 * f) / vs[a] ** 2 for a in range(3))

    assert inner.sum() > 100
    def rel_curvature(f):
        return np.sqrt(np.mean(lap(f)[inner] ** 2)) / np.std(f[inner])

    assert rel_curvature(bg) < 0.15 * rel_curvature(pair["local_field"])
    lf = pair["local_field"][m]
    assert np.std(bg[m]) > 5 * np.std(lf)           # background removal matters


def test_chi_statistics_per_class():
    rng = np.random.default_rng(0)
    codes = [2, 3, 24, 11, 12, 13, 10, 28, 515, 0]
    vals = np.stack([susceptibility.sample_label_values(codes, rng) for _ in range(400)])
    med = dict(zip(codes, np.median(vals, 0)))
    assert med[13] > med[12] > med[3] > med[24] > med[2]          # pallidum > putamen > GM > CSF > WM
    assert abs(med[24]) < 0.01 and -0.06 < med[2] < -0.02 and 0.13 < med[13] < 0.22
    assert abs(med[0] - 9.2) < 0.5 and abs(med[515] + 2.0) < 0.3
    # the global scale is shared by a brain: pallidum/putamen ratio near the class-mean ratio
    assert np.corrcoef(vals[:, 5], vals[:, 4])[0, 1] > 0
    # realistic=False gives the class means exactly
    fixed = susceptibility.sample_label_values(codes, rng, realistic=False)
    assert fixed[codes.index(13)] == pytest.approx(labels.CLASS_PPM[Tissue.PALLIDUM][0])


def test_chi_in_pair_follows_labels():
    p = simulate.make_pair(3, size=48, source=PROC, return_labels=True, p_realistic=1.0, global_scale=(1, 1),
                           texture_ppm=0.0, veins=None, lesions=None, microbleeds=None, calcifications=None)
    m = p["mask"].astype(bool)
    for code in (2, 3, 13):
        sel = (p["labels"] == code) & m
        if sel.sum() < 5:
            continue
        mu, sd = labels.CLASS_PPM[labels.tissue_of(code)]
        assert abs(np.median(p["chi"][sel]) - mu) < 4 * sd


def test_deformation_identity_and_smoothness():
    src = torch.from_numpy(np.random.default_rng(0).integers(0, 5, (20, 22, 24)).astype(np.uint8))
    centre = (np.array(src.shape) - 1) / 2.0
    out = deform.deform_labels(src, (1, 1, 1), centre, src.shape, (1, 1, 1))
    assert torch.equal(out, src)
    u = deform.random_elastic(np.random.default_rng(1), (32, 32, 32), (100, 100, 100), max_std_mm=3.0)
    assert u.shape == (3, 32, 32, 32) and float(u.abs().max()) < 20
    grad = (u[:, 1:] - u[:, :-1]).abs().max() / (100 / 31)        # mm per mm between neighbours
    assert float(grad) < 1.0                                       # smooth, no folding
    zero = deform.integrate_svf(torch.zeros(1, 3, 8, 8, 8))
    assert float(zero.abs().max()) == 0


def test_dataset_multiworker_deterministic():
    from nextqsm_training.dataset import HybridDataset

    ds = HybridDataset(4, size=32, seed=7, sources=PROC)
    direct = [ds[i] for i in range(4)]
    for k in ("chi", "local_field", "total_field", "mask"):
        assert direct[0][k].shape == (1, 32, 32, 32) and direct[0][k].dtype == torch.float32
    assert direct[0]["voxel_size"].shape == (3,) and direct[0]["b0_dir"].shape == (3,)
    dl = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    batches = list(dl)
    got = torch.cat([b["chi"] for b in batches])
    want = torch.stack([d["chi"] for d in direct])
    assert torch.equal(got, want)


def test_cache_shards_roundtrip_and_resume(tmp_path):
    from nextqsm_training.cache import CacheReader, write_cache
    from nextqsm_training.dataset import HybridDataset

    m = write_cache(tmp_path / "c", n=3, size=32, seed=1, sources=PROC, shard_size=2, progress=False, qa=False)
    assert m["complete"] and len(m["shards"]) == 2          # (QA sheets: checked in the CLI test)
    r = CacheReader(tmp_path / "c")
    ds = HybridDataset(3, size=32, seed=1, sources=PROC)
    for i in range(3):
        a, b = r[i], ds[i]
        for k in ("chi", "local_field", "total_field", "mask"):
            assert np.array_equal(a[k].astype(np.float32), b[k][0].numpy()), (i, k)
    from nextqsm_training.dataset import CachedDataset

    noisy = CachedDataset(tmp_path / "c", noise="random")[2]
    assert torch.equal(noisy["local_field_clean"], ds[2]["local_field"])
    d = (noisy["local_field"] - noisy["local_field_clean"])[noisy["mask"] > 0]
    assert 0 < float(d.std()) < 0.1 * float(ds[2]["local_field"][noisy["mask"] > 0].std())
    calls = []
    write_cache(tmp_path / "c", n=3, size=32, seed=1, sources=PROC, shard_size=2, progress=False, qa=False,
                on_pair=calls.append)
    assert calls == []          # everything was already there


def test_user_aseg_without_head_gets_shells(tmp_path, monkeypatch):
    import nibabel as nib

    monkeypatch.setenv("NEXTQSM_LABEL_CACHE", "")     # no disk cache for this throw-away file
    lab, vs = label_sources.procedural_head(1)
    lab = np.where(lab >= 500, 0, lab)
    lab[lab == 24] = 0                       # an aseg-like brain-only map
    lia = np.transpose(lab, (0, 2, 1))[::-1, ::-1, :]    # RAS -> LIA (like FreeSurfer conformed)
    aff = np.array([[-2.0, 0, 0, 100], [0, 0, 2.0, -100], [0, -2.0, 0, 100], [0, 0, 0, 1]])
    path = tmp_path / "aseg.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(lia).astype(np.int16), aff), str(path))
    back, vs2 = label_sources.load_label_file(path)
    assert vs2 == (2.0, 2.0, 2.0)
    vol = label_sources.expand_sources(str(path))[0].load()
    assert 515 in vol.codes and 511 in vol.codes       # skull and skin shells added
    p = simulate.make_pair(0, size=32, source=str(path))
    assert p["mask"].sum() > 100


def test_generate_cli_nifti(tmp_path):
    out = tmp_path / "gen"
    exe = REPO / ".venv" / "bin" / "nextqsm-train"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "nextqsm_training.cli"]
    r = subprocess.run(cmd + ["generate", "--n", "2", "--size", "40", "--format", "nifti", "--source", PROC,
                              "--out", str(out), "--seed", "3", "--bg-supersample", "2"], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "manifest.json").read_text())["options"]["bg_supersample"] == 2
    import nibabel as nib

    pairs = sorted(out.glob("pair_*"))
    assert len(pairs) == 2 and (out / "manifest.json").exists() and list(out.glob("qa_*.png"))
    for d in pairs:
        meta = json.loads((d / "pair.json").read_text())
        img = {n: nib.load(str(d / f"{n}.nii.gz")) for n in ("chi", "localfield", "totalfield", "mask")}
        assert np.allclose(img["chi"].header.get_zooms(), meta["voxel_size_mm"], atol=1e-5)
        chi = np.asarray(img["chi"].dataobj)
        lf = np.asarray(img["localfield"].dataobj)
        tf = np.asarray(img["totalfield"].dataobj)
        m = np.asarray(img["mask"].dataobj).astype(bool)
        assert nrmse(lf, forward_field(chi, meta["voxel_size_mm"], meta["b0_dir"]), m) < 0.02
        bg = (tf - lf)[m]
        lo = lf[m]
        assert np.std(bg - bg.mean()) >= 5 * np.std(lo - lo.mean())


def test_bad_source_is_a_user_error():
    from nextqsm.errors import QSMInputError

    with pytest.raises(QSMInputError):
        label_sources.expand_sources("/no/such/labels.nii.gz")


@needs_synthseg
def test_synthseg_labels_all_classified():
    vol = label_sources.LabelSource("synthseg", "13").load()
    unknown = [int(c) for c in vol.codes if int(c) not in labels.LABEL_TO_TISSUE]
    assert unknown == []
    assert label_sources.HELD_OUT == (13, 14, 15, 16) and 13 not in label_sources.TRAIN_MAPS


@needs_synthseg
def test_realistic_head_small():
    from nextqsm_training.heads import realistic_head

    h = realistic_head(13, size=64, voxel_size=None, b0_dir=(0.1, 0.0, 1.0))
    m = h["mask"].astype(bool)
    for k in ("chi", "local_field", "total_field"):
        assert h[k].shape == (64, 64, 64) and h[k].dtype == np.float32
    seg = h["seg"]
    for cls in (Tissue.WM, Tissue.GM, Tissue.PALLIDUM, Tissue.PUTAMEN, Tissue.CAUDATE, Tissue.THALAMUS):
        sel = (seg == cls) & m
        assert sel.sum() > 3, cls
        assert np.median(h["chi"][sel]) == pytest.approx(labels.CLASS_PPM[cls][0], abs=1e-6), cls
    assert nrmse(h["local_field"], forward_field(h["chi"], h["voxel_size"], h["b0_dir"]), m) < 0.02
    bg = (h["total_field"] - h["local_field"])[m]
    assert np.std(bg) > 5 * np.std(h["local_field"][m])
    h2 = realistic_head(13, size=64, voxel_size=None, b0_dir=(0.1, 0.0, 1.0), noise=0.01)
    assert np.array_equal(h2["local_field_clean"], h["local_field"])
    assert not np.array_equal(h2["local_field"], h["local_field"])


@needs_synthseg
def test_realistic_head_background_is_harmonic_for_oblique_b0():
    """With B0 tilted 20 degrees the native-grid FFT model of sources touching the mask leaves a background
    field that V-SHARP cannot remove (32 % of the local field on head 13); the default fine-grid background
    (voxel-averaged, <= 0.75 mm) is nearly harmonic inside the brain, as real background fields are."""
    from nextqsm.methods.vsharp import vsharp
    from nextqsm_training.heads import realistic_head

    b0 = (0.0, float(np.sin(np.deg2rad(20))), float(np.cos(np.deg2rad(20))))
    resid = {}
    for ss in (1, None):
        h = realistic_head(13, size=64, voxel_size=None, b0_dir=b0, bg_supersample=ss)
        m = h["mask"] > 0
        loc = h["local_field"]
        lb, em = vsharp((h["total_field"] - loc) * m, m, tuple(h["voxel_size"]))
        resid[ss] = np.linalg.norm(lb[em] - lb[em].mean()) / np.linalg.norm(loc[em] - loc[em].mean())
    assert resid[1] > 0.25 and resid[None] < 0.18, resid
    with pytest.raises(ValueError, match="bg_supersample"):
        realistic_head(13, size=64, voxel_size=None, bg_supersample=0)


@needs_synthseg
def test_generator_fine_background_is_harmonic_for_oblique_b0():
    """bg_supersample=4: the external sources drawn on a 4x finer grid and their field averaged over each voxel.
    On a tilted-B0 pair the output-grid background (sources with staircase edges next to the mask) leaves 23 %
    of the local field after V-SHARP; the fine one 10 %. Only the background changes: chi, mask, B0 and the
    local field are the same pair (the option leaves the random stream alone)."""
    from nextqsm.methods.vsharp import vsharp

    kw = dict(size=48, b0_tilt_deg=(1.0, 25.0), smooth_field=(0.0, 0.0))
    pairs = {ss: simulate.make_pair(0, bg_supersample=ss, **kw) for ss in (1, 4)}
    resid = {}
    for ss, p in pairs.items():
        m = p["mask"] > 0
        loc = p["local_field"]
        lb, em = vsharp((p["total_field"] - loc) * m, m, tuple(map(float, p["voxel_size"])))
        resid[ss] = np.linalg.norm(lb[em] - lb[em].mean()) / np.linalg.norm(loc[em] - loc[em].mean())
    assert abs(float(pairs[1]["b0_dir"][2])) < 0.97   # tilted
    assert resid[1] > 0.18 and resid[4] < 0.13, resid
    for k in ("chi", "mask", "b0_dir", "voxel_size"):
        np.testing.assert_array_equal(pairs[1][k], pairs[4][k], err_msg=k)
    np.testing.assert_allclose(pairs[1]["local_field"], pairs[4]["local_field"], rtol=0, atol=1e-6)  # FFT rounding
    assert not np.allclose(pairs[1]["total_field"], pairs[4]["total_field"])
    # bg_supersample_tilted_only: the fine grid for this tilted pair, the output grid for a pair along z
    only = simulate.make_pair(0, bg_supersample=4, bg_supersample_tilted_only=True, **kw)
    np.testing.assert_array_equal(only["total_field"], pairs[4]["total_field"])
    kz = {**kw, "b0_tilt_deg": (0.0, 25.0)}
    z1 = simulate.make_pair(0, **kz)
    zo = simulate.make_pair(0, bg_supersample=4, bg_supersample_tilted_only=True, **kz)
    np.testing.assert_array_equal(z1["total_field"], zo["total_field"])
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="bg_supersample"):
            simulate.make_pair(0, size=32, bg_supersample=bad)


def test_generator_fine_background_on_procedural_heads():
    """The same on a procedural head (no SynthSeg data needed): the fine-grid background of a tilted pair is
    far more harmonic (V-SHARP residual 83 % -> 40 % of the local field on this pair)."""
    from nextqsm.methods.vsharp import vsharp

    resid = {}
    for ss in (1, 4):
        p = simulate.make_pair(0, size=48, source=PROC, b0_tilt_deg=(1.0, 25.0), smooth_field=(0.0, 0.0),
                               bg_supersample=ss)
        m = p["mask"] > 0
        loc = p["local_field"]
        lb, em = vsharp((p["total_field"] - loc) * m, m, tuple(map(float, p["voxel_size"])))
        resid[ss] = np.linalg.norm(lb[em] - lb[em].mean()) / np.linalg.norm(loc[em] - loc[em].mean())
    assert resid[4] < 0.6 * resid[1], resid


def test_correlated_noise_is_smooth_and_keeps_its_std():
    """noise_corr: the noise keeps the requested std but much of it survives a smoothing (white: ~15 %
    at 1 voxel), it is the same perturbation in the local and total field, and it is off by default."""
    from scipy import ndimage as ndi

    kw = dict(size=48, source=PROC, noise=0.01)
    white = simulate.make_pair(21, **kw)
    corr = simulate.make_pair(21, noise_corr=(1.0, 3.0, 3.0), **kw)
    m = white["mask"] > 0
    frac = {}
    for name, p in (("white", white), ("corr", corr)):
        n = (p["local_field"] - p["local_field_clean"]) * m
        assert n[m].std() == pytest.approx(0.01, rel=0.15), name
        frac[name] = ndi.gaussian_filter(n, 1.0)[m].std() / n[m].std()
    assert frac["white"] < 0.25 and frac["corr"] > frac["white"] + 0.2, frac
    d_loc = corr["local_field"] - corr["local_field_clean"]
    d_tot = corr["total_field"] - corr["total_field_clean"]
    c = np.corrcoef(d_loc[m], d_tot[m])[0, 1]
    assert c > 0.25 > np.corrcoef((white["local_field"] - white["local_field_clean"])[m],
                                  (white["total_field"] - white["total_field_clean"])[m])[0, 1]
    off = simulate.make_pair(21, noise_corr=(0.0, 3.0, 3.0), **kw)
    assert np.array_equal(off["local_field"], white["local_field"])


def test_anisotropy_field_follows_the_sti_forward_model():
    """The traceless anisotropic part dchi (n n^T - I/3): fibres along B0 give 2/3 of the isotropic
    dipole field of dchi, fibres perpendicular to B0 (any direction in that plane) -1/3 of it, and
    three orthogonal fibre families cancel (the mean susceptibility is unchanged)."""
    shape = (20, 22, 18)
    dchi = torch.zeros(shape)
    dchi[6:14, 5:16, 7:12] = -0.02
    vs, b0, pad = (1.0, 1.2, 0.9), (0.0, 0.0, 1.0), 6
    iso = simulate.forward_fields(dchi[None], vs, b0, pad)[0]
    scale = float(iso.abs().max())

    def fibres(v):
        return torch.tensor(v, dtype=torch.float32).view(3, 1, 1, 1).expand(3, *shape)

    par = simulate.anisotropy_field(dchi, fibres([0, 0, 1]), vs, b0, pad)
    assert torch.allclose(par, 2.0 / 3.0 * iso, atol=1e-4 * scale)
    for v in ([1, 0, 0], [0.6, 0.8, 0]):
        perp = simulate.anisotropy_field(dchi, fibres(v), vs, b0, pad)
        assert torch.allclose(perp, -1.0 / 3.0 * iso, atol=1e-4 * scale)
    tilted = (0.3, 0.2, 0.93)
    s = sum(simulate.anisotropy_field(dchi, fibres(v), vs, tilted, pad) for v in ([1, 0, 0], [0, 1, 0], [0, 0, 1]))
    assert float(s.abs().max()) < 1e-5 * scale


def test_wm_anisotropy_adds_a_field_but_keeps_the_target():
    """wm_anisotropy: the same chi target (mean susceptibility), both fields change by the same
    anisotropy field (white matter only, a fraction of the local field), off by default."""
    kw = dict(size=48, source=PROC)
    base = simulate.make_pair(5, **kw)
    an = simulate.make_pair(5, wm_anisotropy=(1.0, 0.02, 0.02), **kw)
    m = base["mask"] > 0
    assert np.array_equal(an["chi"], base["chi"])
    d_loc = (an["local_field"] - base["local_field"])[m]
    d_tot = (an["total_field"] - base["total_field"])[m]
    np.testing.assert_allclose(d_loc, d_tot, atol=1e-6)
    assert 0.02 < d_loc.std() / base["local_field"][m].std() < 0.8
    off = simulate.make_pair(5, wm_anisotropy=(0.0, 0.02, 0.02), **kw)
    assert np.array_equal(off["local_field"], base["local_field"])


def test_gaussian_blur_matches_scipy_and_partial_volume_stays_in_its_region():
    """susceptibility.gaussian_blur = scipy's gaussian_filter (zero outside, 3-sigma truncation); partial_volume
    blurs chi only inside the region, keeps a constant there constant and leaves the outside untouched."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    x = rng.normal(size=(17, 14, 12)).astype(np.float32)
    got = susceptibility.gaussian_blur(torch.from_numpy(x), 0.8).numpy()
    np.testing.assert_allclose(got, ndi.gaussian_filter(x, 0.8, mode="constant", truncate=3.0), atol=1e-5)
    region = torch.zeros(x.shape, dtype=torch.bool)
    region[3:14, 2:12, 2:10] = True
    chi = torch.from_numpy(x.copy())
    chi[region] = 0.05
    out = chi.clone()
    susceptibility.partial_volume(out, region, 1.0)
    assert torch.equal(out[~region], chi[~region]) and torch.allclose(out[region], torch.full_like(out[region], 0.05))
    step = torch.where(region, torch.from_numpy((np.arange(17) > 8).astype(np.float32))[:, None, None] * 0.1, chi)
    sm = step.clone()
    susceptibility.partial_volume(sm, region, 1.0)
    g = lambda a: float((torch.diff(a, dim=0)[region[1:] & region[:-1]] ** 2).sum())  # noqa: E731
    assert g(sm) < 0.5 * g(step) and torch.equal(sm[~region], step[~region])


def test_chi_blur_smooths_the_target_and_keeps_the_physics():
    """chi_blur: the brain's chi is blurred (smaller gradient energy), its field is still the forward model's,
    and with the probability 0 the pair is exactly the old one (no random draw)."""
    kw = dict(size=48, source=PROC)
    base = simulate.make_pair(5, **kw)
    bl = simulate.make_pair(5, chi_blur=(1.0, 1.0, 1.0), **kw)
    m = bl["mask"].astype(bool)
    grad = lambda c: sum(float((np.diff(c, axis=a)[(np.diff(m.astype(int), axis=a) == 0) & np.take(m, range(1, m.shape[a]), axis=a)] ** 2).sum()) for a in range(3))  # noqa: E731
    assert grad(bl["chi"]) < 0.7 * grad(base["chi"])
    ref = forward_field(bl["chi"], bl["voxel_size"], bl["b0_dir"])
    assert nrmse(bl["local_field"], ref, m) < 0.02
    off = simulate.make_pair(5, chi_blur=(0.0, 1.0, 1.0), **kw)
    assert all(np.array_equal(off[k], base[k]) for k in ("chi", "local_field", "total_field"))
