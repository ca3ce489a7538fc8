"""`nextqsm demo` end to end (small phantom) and `nextqsm methods`, as real subprocesses."""
from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np


def test_demo_writes_outputs(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "nextqsm.cli", "demo", "--out", str(out), "--size", "64", "64", "56",
           "--voxel-size", "3.5", "3.5", "3.5", "--methods", "tkd", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for f in ("truth_chi.nii.gz", "total_field.nii.gz", "mask.nii.gz", "chi_tkd.nii.gz", "localfield_tkd.nii.gz",
              "metrics.json", "metrics.md", "comparison.png"):
        assert (out / f).exists(), f
    m = json.loads((out / "metrics.json").read_text())["metrics"]["tkd"]
    assert 0 < m["nrmse"] < 150 and m["localfield_nrmse"] < 100
    # the calcification's metrics: in the table, NaN here (at 3.5 mm the 2.5 mm-radius sphere covers no voxel centre)
    assert "calc_moment" in (out / "metrics.md").read_text() and np.isnan(m["calc_moment"])
    chi = nib.load(str(out / "chi_tkd.nii.gz"))
    assert chi.shape == (64, 64, 56) and np.allclose(chi.header.get_zooms(), 3.5)


def test_methods_lists():
    proc = subprocess.run([sys.executable, "-m", "nextqsm.cli", "methods"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "tkd" in proc.stdout and "nextqsm" in proc.stdout


def test_help_states_units():
    proc = subprocess.run([sys.executable, "-m", "nextqsm.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ppm" in proc.stdout and "--b0-dir" in proc.stdout
