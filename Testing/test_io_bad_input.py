"""Every bad-input case gets a QSMInputError naming the file, the problem and the fix,
and nothing partial is left on disk. Runs the real CLI in-process on real NIfTI files."""
from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

from nextqsm.cli import main
from nextqsm.errors import QSMInputError
from nextqsm.io import atomic_path, load_nifti, read_sidecar, save_nifti, with_suffix_tag, write_json_atomic

AFF = np.diag([1.5, 1.5, 2.0, 1.0])


def _write(path, data, affine=AFF):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return str(path)


@pytest.fixture
def good(tmp_path):
    rng = np.random.default_rng(0)
    field = (rng.standard_normal((20, 20, 16)) * 0.02).astype(np.float32)
    mask = np.zeros((20, 20, 16), np.float32)
    mask[4:16, 4:16, 3:13] = 1
    return tmp_path, field, mask


def run_cli(tmp_path, field_file, mask_file, *extra):
    out = tmp_path / "out" / "chi.nii.gz"
    code = main([field_file, mask_file, str(out), "--method", "tkd", "--input", "local", "--quiet", *extra])
    return code, out


def assert_fails(capsys, tmp_path, field_file, mask_file, *patterns, extra=()):
    code, out = run_cli(tmp_path, field_file, mask_file, *extra)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Fix:" in err
    for p in patterns:
        assert p.lower() in err.lower(), err
    # nothing partial on disk
    assert not out.exists()
    if out.parent.exists():
        assert os.listdir(out.parent) == []
    return err


def test_good_input_runs(good, capsys):
    tmp, field, mask = good
    code, out = run_cli(tmp, _write(tmp / "f.nii.gz", field), _write(tmp / "m.nii.gz", mask))
    assert code == 0, capsys.readouterr().err
    img = nib.load(str(out))
    assert np.allclose(img.affine, AFF) and img.shape == field.shape
    assert sorted(os.listdir(out.parent)) == ["chi.json", "chi.nii.gz"]  # TKD on a local field: no local field


def test_sidecar_records_how_nextqsm_ran(good, capsys):
    """`nextqsm FIELD MASK OUT` writes OUT's JSON sidecar: method, the parameters as run (background removal,
    flips, chi level), geometry, and the sha256 of the shipped weights it used."""
    import json

    from nextqsm.models.weights import load_manifest

    tmp, field, mask = good
    out = tmp / "o" / "chi.nii.gz"
    code = main([_write(tmp / "f.nii.gz", field), _write(tmp / "m.nii.gz", mask), str(out), "--method", "nextqsm",
                 "--device", "cpu", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert sorted(os.listdir(out.parent)) == ["chi.json", "chi.nii.gz", "chi_localfield.nii.gz"]
    meta = json.loads((out.parent / "chi.json").read_text())
    shipped = load_manifest()["models"]
    assert meta["Method"] == "nextqsm" and meta["InputKind"] == "total" and meta["VoxelSize_mm"] == [1.5, 1.5, 2.0]
    assert meta["MethodParameters"]["tta"] == load_manifest()["defaults"]["tta"]["cpu"]
    assert meta["MethodParameters"]["bfr"] == "lbv" and meta["Device"] == "cpu"
    assert meta["Weights"] == {"nextqsm-vn": shipped["nextqsm-vn"]["sha256"]}   # LBV removed the background: no U-Net
    # a local field in: the local field is the input, so no copy of it is written next to chi
    out = tmp / "l" / "chi.nii.gz"
    code = main([str(tmp / "f.nii.gz"), str(tmp / "m.nii.gz"), str(out), "--method", "nextqsm", "--input", "local",
                 "--param", "tta=1", "--param", "refine=false", "--device", "cpu", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert sorted(os.listdir(out.parent)) == ["chi.json", "chi.nii.gz"]
    meta = json.loads((out.parent / "chi.json").read_text())
    assert meta["InputKind"] == "local" and list(meta["Weights"]) == ["nextqsm-vn"]
    # the paper's pipeline: the background U-Net runs, and its checksum is recorded
    out = tmp / "u" / "chi.nii.gz"
    code = main([str(tmp / "f.nii.gz"), str(tmp / "m.nii.gz"), str(out), "--method", "nextqsm", "--param", "bfr=unet",
                 "--param", "tta=1", "--device", "cpu", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out.parent / "chi.json").read_text())["Weights"] == {
        "nextqsm-bfr": shipped["nextqsm-bfr"]["sha256"], "nextqsm-vn": shipped["nextqsm-vn"]["sha256"]}


def test_nan(good, capsys):
    tmp, field, mask = good
    field[10, 10, 8] = np.nan
    assert_fails(capsys, tmp, _write(tmp / "f.nii.gz", field), _write(tmp / "m.nii.gz", mask), "f.nii.gz", "NaN")


def test_inf(good, capsys):
    tmp, field, mask = good
    field[10, 10, 8] = np.inf
    assert_fails(capsys, tmp, _write(tmp / "f.nii.gz", field), _write(tmp / "m.nii.gz", mask), "NaN/Inf")


def test_shape_mismatch(good, capsys):
    tmp, field, mask = good
    assert_fails(capsys, tmp, _write(tmp / "f.nii.gz", field), _write(tmp / "m.nii.gz", mask[:, :, :10]),
                 "m.nii.gz", "does not match", "resample")


def test_affine_mismatch(good, capsys):
    tmp, field, mask = good
    aff2 = AFF.copy()
    aff2[0, 3] = 5.0
    assert_fails(capsys, tmp, _write(tmp / "f.nii.gz", field), _write(tmp / "m.nii.gz", mask, aff2),
                 "affine", "same grid")


def test_empty_mask(good, capsys):
    tmp, field, mask = good
    assert_fails(capsys, tmp, _write(tmp / "f.nii.gz", field), _write(tmp / "m.nii.gz", mask * 0), "empty")


def test_non_binary_mask(good, capsys):
    tmp, field, mask = good
    assert_fails(capsys, tmp, _write(tmp / "f.nii.gz", field), _write(tmp / "m.nii.gz", mask * 0.5), "not binary")


def test_4d_where_3d_expected(good, capsys):
    tmp, field, mask = good
    f4 = np.stack([field, field], axis=-1)
    assert_fails(capsys, tmp, _write(tmp / "f.nii.gz", f4), _write(tmp / "m.nii.gz", mask), "3D", "4D")


def test_radians_where_ppm_expected(good, capsys):
    tmp, field, mask = good
    ff = _write(tmp / "f.nii.gz", field * 150)  # +-3 rad-like range
    assert_fails(capsys, tmp, ff, _write(tmp / "m.nii.gz", mask), "radians", "allow-any-range")
    code, out = run_cli(tmp, ff, str(tmp / "m.nii.gz"), "--allow-any-range")  # the override works
    assert code == 0 and out.exists()


def test_hz_where_ppm_expected(good, capsys):
    tmp, field, mask = good
    assert_fails(capsys, tmp, _write(tmp / "f.nii.gz", field * 5000), _write(tmp / "m.nii.gz", mask), "Hz")


def test_zero_voxel_size(good, capsys):
    tmp, field, mask = good
    img = nib.Nifti1Image(field, AFF)
    img.header.set_zooms((0.0, 1.5, 2.0))
    nib.save(img, str(tmp / "f.nii.gz"))
    assert_fails(capsys, tmp, str(tmp / "f.nii.gz"), _write(tmp / "m.nii.gz", mask), "voxel size")


def test_unreadable_file(good, capsys):
    tmp, field, mask = good
    (tmp / "f.nii.gz").write_bytes(b"this is not a nifti file")
    assert_fails(capsys, tmp, str(tmp / "f.nii.gz"), _write(tmp / "m.nii.gz", mask), "cannot read")


def test_missing_file(good, capsys):
    tmp, field, mask = good
    assert_fails(capsys, tmp, str(tmp / "nope.nii.gz"), _write(tmp / "m.nii.gz", mask), "not found")


def test_unknown_method_and_b0(good, capsys):
    tmp, field, mask = good
    ff, mf = _write(tmp / "f.nii.gz", field), _write(tmp / "m.nii.gz", mask)
    out = tmp / "o.nii.gz"
    assert main([ff, mf, str(out), "--method", "magic", "--quiet"]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main([ff, mf, str(out), "--method", "tkd", "--input", "local", "--b0-dir", "0", "0", "0", "--quiet"]) == 2
    assert "B0" in capsys.readouterr().err
    assert not out.exists()


def test_atomic_save_leaves_nothing_on_failure(tmp_path):
    (tmp_path / "x.nii.gz").mkdir()  # the final rename onto a directory fails after the temp file is written
    with pytest.raises(OSError):
        save_nifti(np.zeros((4, 4, 4), np.float32), np.eye(4), tmp_path / "x.nii.gz")
    assert os.listdir(tmp_path) == ["x.nii.gz"] and os.listdir(tmp_path / "x.nii.gz") == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_outputs_get_normal_permissions(tmp_path):
    """Outputs are readable as a plain open() would make them (umask), not mkstemp's private 0o600; an
    existing file keeps its mode when overwritten."""
    old = os.umask(0o022)
    try:
        nii = save_nifti(np.zeros((4, 4, 4), np.float32), np.eye(4), tmp_path / "chi.nii.gz")
        js = write_json_atomic(tmp_path / "chi.json", {"a": 1})
        assert oct(nii.stat().st_mode & 0o777) == oct(0o644) and oct(js.stat().st_mode & 0o777) == oct(0o644)
        os.umask(0o027)
        assert save_nifti(np.ones((4, 4, 4), np.float32), np.eye(4), tmp_path / "b.nii.gz").stat().st_mode & 0o777 == 0o640
        nii.chmod(0o600)
        save_nifti(np.ones((4, 4, 4), np.float32), np.eye(4), nii)
        assert nii.stat().st_mode & 0o777 == 0o600 and nib.load(str(nii)).get_fdata().max() == 1.0
    finally:
        os.umask(old)


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "ckpt.pt"
    target.write_text("previous")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "previous" and os.listdir(tmp_path) == ["ckpt.pt"]
    with atomic_path(target, suffix=".npz") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".npz") and tmp != target
        np.savez(tmp, x=np.arange(3))
    assert np.load(target)["x"].tolist() == [0, 1, 2] and os.listdir(tmp_path) == ["ckpt.pt"]


def test_io_roundtrip_4d_and_sidecar(tmp_path):
    data = np.random.default_rng(0).standard_normal((6, 7, 8, 3)).astype(np.float32)
    p = tmp_path / "sub-01_part-phase_MEGRE.nii.gz"
    _write(p, data)
    (tmp_path / "sub-01_part-phase_MEGRE.json").write_text(json.dumps({"EchoTime": 0.02, "MagneticFieldStrength": 3}))
    v = load_nifti(p, ndim=4)
    assert v.data.shape == (6, 7, 8, 3) and v.sidecar["EchoTime"] == 0.02
    assert read_sidecar(p)["MagneticFieldStrength"] == 3
    with pytest.raises(QSMInputError, match="3D"):
        load_nifti(p, ndim=3)
    out = save_nifti(v.data[..., 0], v.affine, tmp_path / "o.nii.gz", header=v.header)
    back = load_nifti(out)
    np.testing.assert_array_equal(back.data, data[..., 0])
    assert np.allclose(back.affine, AFF)
    assert with_suffix_tag("a/out.nii.gz", "_localfield").name == "out_localfield.nii.gz"


def test_reference_mean_and_roi(good, capsys):
    """--reference: chi referenced to the brain mask's mean or to an ROI's (e.g. CSF); the same map up to the constant;
    a bad ROI (off grid, outside the mask) is a clear error before anything runs."""
    tmp, field, mask = good
    ff, mf = _write(tmp / "f.nii.gz", field), _write(tmp / "m.nii.gz", mask)
    code, out = run_cli(tmp, ff, mf)
    raw = nib.load(str(out)).get_fdata()
    m = mask > 0
    code, out = run_cli(tmp, ff, mf, "--reference", "mean")
    assert code == 0, capsys.readouterr().err
    ref = nib.load(str(out)).get_fdata()
    assert abs(ref[m].mean()) < 1e-6 and abs(raw[m].mean()) > 1e-4
    assert np.allclose(ref[m] - raw[m], -raw[m].mean(), atol=1e-6)
    roi = np.zeros_like(mask)
    roi[6:9, 6:9, 5:8] = 1
    code, out = run_cli(tmp, ff, mf, "--reference", _write(tmp / "roi.nii.gz", roi))
    assert code == 0, capsys.readouterr().err
    assert abs(nib.load(str(out)).get_fdata()[roi > 0].mean()) < 1e-6
    bad = tmp / "bad"      # a fresh output folder: a refused run must leave it empty
    assert_fails(capsys, bad, ff, mf, "reference", extra=("--reference", _write(tmp / "r2.nii.gz", roi, np.diag([1, 1, 1, 1.0]))))
    out_roi = np.zeros_like(mask)
    out_roi[0:2, 0:2, 0:2] = 1
    assert_fails(capsys, bad, ff, mf, "reference", "no voxel inside the mask", extra=("--reference", _write(tmp / "r3.nii.gz", out_roi)))
    assert_fails(capsys, bad, ff, mf, "neither", "mean", extra=("--reference", "median"))
    code, out = run_cli(tmp, ff, mf, "--param", "reference=mean")     # the same through --param
    assert code == 0 and abs(nib.load(str(out)).get_fdata()[m].mean()) < 1e-6
    assert_fails(capsys, bad, ff, mf, "twice", extra=("--param", "reference=mean", "--reference", "mean"))


def test_reference_in_the_python_api():
    """run(..., reference=...) for any method: offset recorded, demeaned NRMSE unchanged, bad values refused early."""
    from nextqsm.metrics import nrmse
    from nextqsm.pipeline import QSMInput, run

    rng = np.random.default_rng(1)
    mask = np.zeros((24, 24, 24), bool)
    mask[5:19, 5:19, 5:19] = True
    lf = (rng.standard_normal(mask.shape) * 0.01).astype(np.float32) * mask
    inp = QSMInput(field=lf, mask=mask, kind="local")
    a = run("tkd", inp)
    b = run("tkd", inp, reference="mean")
    assert b.params["reference"] == "mean" and abs(b.params["reference_offset_ppm"] - a.chi[a.mask].mean()) < 1e-7
    assert abs(nrmse(a.chi, b.chi, mask) - 0.0) < 1e-3
    with pytest.raises(QSMInputError, match="shape"):
        run("tkd", inp, reference=np.ones((3, 3, 3), bool))
    with pytest.raises(QSMInputError, match="unknown reference"):
        run("tkd", inp, reference="csf")


def test_sidecar_read_as_utf8(tmp_path):
    """BIDS JSON is UTF-8 whatever the platform's locale: a sidecar with non-ASCII text reads back."""
    p = tmp_path / "sub-01_part-phase_MEGRE.nii.gz"
    _write(p, np.zeros((4, 4, 4), np.float32))
    (tmp_path / "sub-01_part-phase_MEGRE.json").write_bytes(
        json.dumps({"EchoTime": 0.02, "InstitutionName": "Universität Zürich"}, ensure_ascii=False).encode("utf-8"))
    assert read_sidecar(p)["InstitutionName"] == "Universität Zürich"
