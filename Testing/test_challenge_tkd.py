"""2016 challenge local field through the real CLI (subprocess): TKD 0.19 bar of issue 2."""
from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np

from conftest import shared_data
from nextqsm.metrics import nrmse


def test_tkd_on_challenge_matches_reference_figures(tmp_path):
    d = shared_data("qsm2016_challenge")
    out = tmp_path / "out.nii.gz"
    cmd = [sys.executable, "-m", "nextqsm.cli", str(d / "phs_tissue.nii.gz"), str(d / "msk.nii.gz"), str(out),
           "--method", "tkd", "--input", "local", "--param", "tkd_threshold=0.19", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    chi_img = nib.load(str(out))
    ref_img = nib.load(str(d / "chi_cosmos.nii.gz"))
    assert np.allclose(chi_img.affine, ref_img.affine) and chi_img.shape == ref_img.shape
    chi = chi_img.get_fdata()
    mask = nib.load(str(d / "msk.nii.gz")).get_fdata() > 0
    e_cosmos = nrmse(chi, ref_img.get_fdata(), mask)
    e_33 = nrmse(chi, nib.load(str(d / "chi_33.nii.gz")).get_fdata(), mask)
    assert abs(e_cosmos - 86.5) <= 1.5, e_cosmos
    assert abs(e_33 - 110.6) <= 1.5, e_33
    # the JSON sidecar says what produced the map
    import json

    meta = json.loads((tmp_path / "out.json").read_text())
    assert meta["Method"] == "tkd" and meta["InputKind"] == "local" and meta["Units"] == "ppm"
    assert meta["MethodParameters"]["tkd_threshold"] == 0.19 and meta["VoxelSize_mm"] == list(map(float, chi_img.header.get_zooms()[:3]))
    assert "Weights" not in meta and meta["Timings_s"]["total"] > 0
