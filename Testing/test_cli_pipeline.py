"""`nextqsm pipeline` and `nextqsm bids` end to end on small NIfTI files (real files, real processing)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import nibabel as nib  # noqa: E402

from nextqsm import bids, cli_pipeline  # noqa: E402
from nextqsm.dipole import forward_field  # noqa: E402
from nextqsm.units import ppm_to_rad  # noqa: E402

TES = [0.004, 0.008, 0.012]
FAST = ["--param", "iterations=40", "--quiet"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nextqsm")
    sub = p.add_subparsers(dest="command", required=True)
    cli_pipeline.register(sub)
    bids.register(sub)
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return int(args.func(args))


def acquisition(n: int = 24, seed: int = 0):
    """Wrapped 3-echo phase, magnitude (i, j, k, echo) and true total field [ppm] of a small head."""
    rng = np.random.default_rng(seed)
    c = np.stack(np.meshgrid(*[np.arange(n) - n / 2 + 0.5] * 3, indexing="ij"))
    brain = ((c / np.array([0.38 * n, 0.32 * n, 0.32 * n])[:, None, None, None]) ** 2).sum(0) <= 1
    chi = np.where(brain & (np.abs(c[0]) < 3), 0.1, 0.0).astype(np.float32)
    chi[(c[1] > 0.42 * n)] = 9.0  # air-like source outside the brain
    field = forward_field(chi, (1, 1, 1), (0, 0, 1))
    ph, mg = [], []
    for t in TES:
        z = np.where(brain, 1.0, 0.02) * np.exp(1j * ppm_to_rad(field, t, 3.0))
        z = z + (rng.normal(size=z.shape) + 1j * rng.normal(size=z.shape)) / 200
        ph.append(np.angle(z))
        mg.append(np.abs(z))
    return np.stack(ph, -1).astype(np.float32), np.stack(mg, -1).astype(np.float32), field, brain


def _affine():
    a = np.diag([1.0, 1.0, 1.0, 1.0])
    a[:3, 3] = [-12, -12, -12]
    return a


def _save(data, path, sidecar=None):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), _affine()), str(path))
    if sidecar is not None:
        Path(str(path).replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))


def test_pipeline_4d_with_params_json(tmp_path):
    ph, mg, field, brain = acquisition()
    _save(ph, tmp_path / "phase.nii.gz")
    _save(mg, tmp_path / "mag.nii.gz")
    (tmp_path / "params.json").write_text(json.dumps({"TE": TES, "B0": 3.0, "B0_dir": [0, 0, 1],
                                                      "voxel_size": [1, 1, 1]}))
    out = tmp_path / "out"
    rc = main(["pipeline", "--phase", str(tmp_path / "phase.nii.gz"), "--magnitude", str(tmp_path / "mag.nii.gz"),
               "--params", str(tmp_path / "params.json"), "--out", str(out), "--method", "tgv", *FAST])
    assert rc == 0
    for name in ("chi", "totalfield", "mask"):
        img = nib.load(str(out / f"{name}.nii.gz"))
        assert img.shape == ph.shape[:3] and np.allclose(img.affine, _affine())
    total = nib.load(str(out / "totalfield.nii.gz")).get_fdata()
    mask = nib.load(str(out / "mask.nii.gz")).get_fdata() > 0  # the (eroded) mask TGV used
    inner = (total != 0) & brain  # the field mask was made from the magnitude
    assert inner.sum() > 0.8 * brain.sum() and mask.sum() > 0 and not (mask & ~(total != 0)).any()
    assert np.linalg.norm(total[inner] - field[inner]) / np.linalg.norm(field[inner]) < 0.05
    meta = json.loads((out / "nextqsm.json").read_text())
    assert meta["Method"] == "tgv" and meta["EchoTime"] == TES and meta["PhaseProcessing"]["te_source"] == "params.json"
    assert np.isfinite(nib.load(str(out / "chi.nii.gz")).get_fdata()).all()


def test_pipeline_per_echo_files_with_mask_and_integer_phase(tmp_path):
    ph, mg, field, brain = acquisition(seed=1)
    files = []
    for e in range(3):
        f = tmp_path / f"sub-01_echo-{e + 1}_part-phase_MEGRE.nii.gz"
        _save(np.round(ph[..., e] / np.pi * 4096).clip(-4096, 4095), f,
              sidecar={"EchoTime": TES[e], "MagneticFieldStrength": 3.0})
        files.append(str(f))
    _save(brain, tmp_path / "mask.nii.gz")
    out = tmp_path / "out"
    rc = main(["pipeline", "--phase", *files[::-1], "--mask", str(tmp_path / "mask.nii.gz"), "--out", str(out),
               "--phase-units", "integer", "--device", "cpu", *FAST])
    assert rc == 0
    total = nib.load(str(out / "totalfield.nii.gz")).get_fdata()
    assert np.linalg.norm(total[brain] - field[brain]) / np.linalg.norm(field[brain]) < 0.05
    meta = json.loads((out / "nextqsm.json").read_text())
    assert "Siemens" in meta["PhaseProcessing"]["phase_units"]
    assert meta["PhaseProcessing"]["mask_source"] == "given"


def _fake_bids(root: Path):
    for sub, ses in (("01", None), ("02", "pre")):
        anat = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
        anat.mkdir(parents=True)
        ph, mg, _, _ = acquisition(20, seed=int(sub))
        stem = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
        for e in range(3):
            sc = {"EchoTime": TES[e], "MagneticFieldStrength": 3.0}
            _save(ph[..., e], anat / f"{stem}_echo-{e + 1}_part-phase_MEGRE.nii.gz", sc)
            _save(mg[..., e], anat / f"{stem}_echo-{e + 1}_part-mag_MEGRE.nii.gz", sc)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "fake", "BIDSVersion": "1.9.0"}))


def test_bids_discovery_processing_and_skip(tmp_path):
    root, out = tmp_path / "bids", tmp_path / "deriv"
    _fake_bids(root)
    runs = bids.find_runs(root)
    assert [r.stem for r in runs] == ["sub-01", "sub-02_ses-pre"]
    assert all(len(r.phase) == 3 and len(r.magnitude) == 3 for r in runs)
    assert [r.stem for r in bids.find_runs(root, ["sub-02"])] == ["sub-02_ses-pre"]

    assert main(["bids", str(root), str(out), "--participant-label", "01", *FAST]) == 0
    d1 = out / "nextqsm" / "sub-01" / "anat"
    chi = d1 / "sub-01_Chimap.nii.gz"
    assert chi.exists() and (d1 / "sub-01_desc-brain_mask.nii.gz").exists()
    assert (d1 / "sub-01_desc-total_fieldmap.nii.gz").exists()
    meta = json.loads((d1 / "sub-01_Chimap.json").read_text())
    assert meta["Method"] == "tgv" and meta["MethodParameters"]["iterations"] == 40
    assert (out / "nextqsm" / "dataset_description.json").exists()
    assert not (out / "nextqsm" / "sub-02").exists()

    mtime = chi.stat().st_mtime_ns
    assert main(["bids", str(root), str(out), *FAST]) == 0  # sub-01 skipped (done), sub-02 processed
    assert chi.stat().st_mtime_ns == mtime
    assert (out / "nextqsm" / "sub-02" / "ses-pre" / "anat" / "sub-02_ses-pre_Chimap.nii.gz").exists()


def test_bids_empty_dataset_is_a_clear_error(tmp_path):
    from nextqsm.errors import QSMInputError

    (tmp_path / "sub-01" / "anat").mkdir(parents=True)
    with pytest.raises(QSMInputError, match="no multi-echo GRE runs"):
        main(["bids", str(tmp_path), str(tmp_path / "out"), "--quiet"])
