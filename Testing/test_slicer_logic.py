"""The Qt-free Slicer logic on slicer-core: phase + mask nodes in, chi nodes out (real worker subprocess)."""
from __future__ import annotations

import json

import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core==5.12.4.0) is needed")
nib = pytest.importorskip("nibabel")

from nextqsm import mrml  # noqa: E402
from nextqsm.errors import QSMInputError  # noqa: E402
from nextqsm.geometry import b0_direction, oblique_affine  # noqa: E402
from nextqsm.slicer_logic import (QSMLogic, comparison_layout_xml, describe_device_info,  # noqa: E402
                                  nextqsm_params, parse_echo_times_ms, parse_vector)

SHAPE = (32, 32, 28)
VS = (7.0, 7.0, 7.0)
PARAMS = {"tgv": {"iterations": 20}}  # few iterations: geometry, not accuracy, is tested here


def _two_methods():
    from nextqsm.pipeline import available_methods

    avail = available_methods()
    chosen = [m for m in ("tkd", "vsharp-l2", "vsharp-tv", "tgv") if m in avail][:2]
    if not chosen:
        pytest.skip(f"needs tkd, vsharp-l2, vsharp-tv or tgv; available: {avail}")
    return chosen


def _job_dirs():
    return set(Path(tempfile.gettempdir()).glob("nextqsm_job_*"))


@pytest.fixture(scope="module")
def las_case(tmp_path_factory):
    """A phantom written as a left-handed oblique NIfTI and read back the way Slicer reads it (flipped along k)."""
    from nextqsm.phantom import make_phantom

    aff = oblique_affine(VS, 20.0, "y", SHAPE) @ np.diag([-1.0, 1, 1, 1])
    ph = make_phantom(shape=SHAPE, voxel_size=VS, seed=2, affine=aff)
    d = tmp_path_factory.mktemp("las")
    nib.save(nib.Nifti1Image(ph.total_field, aff), str(d / "field.nii.gz"))
    nib.save(nib.Nifti1Image(ph.mask.astype(np.int16), aff), str(d / "mask.nii.gz"))
    nib.save(nib.Nifti1Image(ph.seg.astype(np.int16), aff), str(d / "seg.nii.gz"))
    scene = slicer.vtkMRMLScene()
    phase = mrml.load_volume_with_storage_node(scene, d / "field.nii.gz", "field")
    mask = mrml.load_volume_with_storage_node(scene, d / "mask.nii.gz", "mask", labelmap=True)
    methods = _two_methods()
    logic = QSMLogic(scene)
    before = _job_dirs()
    seen = []
    out = logic.run(phase, mask, methods=methods, phase_units="ppm", device="cpu", method_params=PARAMS,
                    progress=lambda f, s: seen.append(f), timeout=300)
    return {"scene": scene, "phase": phase, "mask": mask, "out": out, "methods": methods, "logic": logic,
            "phantom": ph, "affine": aff, "dir": d, "progress": seen, "new_dirs": _job_dirs() - before}


def test_two_methods_in_one_run(las_case):
    if len(las_case["methods"]) < 2:
        pytest.skip(f"only {las_case['methods']} available (the tkd pipeline is registered by the classical-methods work)")
    assert set(las_case["out"].chi) == set(las_case["methods"])


def test_chi_nodes_have_the_input_geometry(las_case):
    c = las_case
    assert not np.allclose(mrml.ijk_to_ras(c["phase"]), c["affine"])  # Slicer flipped the left-handed file
    for m in c["methods"]:
        node = c["out"].chi[m]
        assert node.GetScene() is c["scene"]
        np.testing.assert_allclose(mrml.ijk_to_ras(node), mrml.ijk_to_ras(c["phase"]), atol=1e-9)
        assert node.GetImageData().GetDimensions() == c["phase"].GetImageData().GetDimensions()
        assert node.GetAttribute("NeXtQSM.method") == m and "_chi_" in node.GetName()
        assert node.GetAttribute("NeXtQSM.device") == "cpu"
        assert isinstance(json.loads(node.GetAttribute("NeXtQSM.parameters")), dict)   # the parameters as run
        assert node.GetDisplayNode().GetWindow() == pytest.approx(0.40)
    assert c["progress"][-1] == 1.0
    assert c["new_dirs"] == set()  # the job's temporary folder is gone after loading


def test_chi_lands_at_the_right_physical_position(las_case):
    """The logic's result (flipped node grid) equals the pipeline run directly on the file's grid."""
    from nextqsm.pipeline import QSMInput, run

    c = las_case
    ph = c["phantom"]
    for m in c["methods"]:
        direct = run(m, QSMInput(field=ph.total_field, mask=ph.mask, voxel_size=VS, b0_dir=b0_direction(c["affine"]),
                                 kind="total", device="cpu", b0_t=3.0), **PARAMS.get(m, {})).chi
        p = c["dir"] / f"out_{m}.nii.gz"
        mrml.volume_to_nifti(c["out"].chi[m], p)
        img = nib.load(str(p))
        np.testing.assert_allclose(img.affine[:3, :3] @ np.diag([1, 1, -1]), c["affine"][:3, :3], atol=1e-6)
        stored = np.asarray(img.dataobj)
        back = stored[..., ::-1]
        # relative RMS difference; not 0 because the FFT zero padding (a quarter of each axis, rounded
        # to a fast length) is not symmetric under the k-flip: measured 8 % for TKD on this tiny
        # 7 mm grid, falling to 1.4 % with 40 voxels of padding (the geometry itself is exact)
        err = np.linalg.norm(back - direct) / np.linalg.norm(direct)
        assert err < 0.12, f"{m}: relative difference {err:.3f} from the direct run on the file grid"
        wrong = np.linalg.norm(stored - direct) / np.linalg.norm(direct)  # ignoring the flip: far off
        assert wrong > 5 * err, (wrong, err)
        # (accuracy is not the point at 7 mm voxels; the methods' own tests measure it)


def test_roi_table_plot_and_difference(las_case):
    c = las_case
    scene, logic, out = c["scene"], c["logic"], c["out"]
    seg = mrml.load_volume_with_storage_node(scene, c["dir"] / "seg.nii.gz", "seg", labelmap=True)
    from nextqsm.sampledata import labels_to_segmentation

    labels_node = labels_to_segmentation(scene, mrml.array_from_volume(seg).astype(np.int16), mrml.ijk_to_ras(seg),
                                         {1: "caudate", 2: "globus pallidus", 8: "white matter"}, keep=(1, 2, 8),
                                         name="rois")
    table, chart = logic.roi_table(out.chi, labels_node, c["phase"])
    rows = mrml.rows_from_table(table)
    assert [r["ROI"] for r in rows] == ["caudate", "globus pallidus", "white matter"]
    m0 = c["methods"][0]
    from nextqsm.slicer_logic import method_label

    chi0 = mrml.array_from_volume(out.chi[m0])
    lab = mrml.array_from_volume(seg)
    expect = chi0[lab == 2].mean()
    assert rows[1][f"{method_label(m0)} mean"] == pytest.approx(expect, rel=1e-5, abs=1e-7)
    assert rows[1]["voxels"] == (lab == 2).sum()
    assert chart.GetNumberOfPlotSeriesNodes() == len(c["methods"])

    a, b = out.chi[c["methods"][0]], out.chi[c["methods"][-1]]
    diff = logic.difference(a, b, "diff")
    np.testing.assert_allclose(mrml.array_from_volume(diff), mrml.array_from_volume(a) - mrml.array_from_volume(b))
    np.testing.assert_allclose(mrml.ijk_to_ras(diff), mrml.ijk_to_ras(a))


def test_failure_leaves_the_scene_and_disk_unchanged():
    scene = slicer.vtkMRMLScene()
    aff = np.diag([*VS, 1.0])
    field = np.zeros(SHAPE, np.float32)
    field[5, 5, 5] = np.nan  # the worker refuses NaN
    phase = mrml.add_volume_node(scene, field, aff, "bad")
    mask = mrml.add_volume_node(scene, np.ones(SHAPE, np.int16), aff, "m", "vtkMRMLLabelMapVolumeNode")
    n0, before = scene.GetNumberOfNodes(), _job_dirs()
    with pytest.raises(QSMInputError, match="NaN"):
        QSMLogic(scene).run(phase, mask, methods=["tgv"], phase_units="ppm", device="cpu", timeout=120)
    assert scene.GetNumberOfNodes() == n0
    assert _job_dirs() - before == set()
    with pytest.raises(QSMInputError, match="echo time"):  # refused before any file is written
        QSMLogic(scene).start(phase, mask, methods=["tgv"], phase_units="wrapped_rad", te_ms="5, 10")
    assert _job_dirs() - before == set()


def test_cancel_creates_no_nodes():
    scene = slicer.vtkMRMLScene()
    aff = np.diag([*VS, 1.0])
    phase = mrml.add_volume_node(scene, np.zeros(SHAPE, np.float32), aff, "f")
    mask = mrml.add_volume_node(scene, np.ones(SHAPE, np.int16), aff, "m", "vtkMRMLLabelMapVolumeNode")
    logic = QSMLogic(scene)
    n0, before = scene.GetNumberOfNodes(), _job_dirs()
    run = logic.start(phase, mask, methods=["tgv"], phase_units="ppm", device="cpu", extra={"debug_hold_s": 60})
    t0 = time.monotonic()
    while run.job.progress < 0.5 and time.monotonic() - t0 < 60:
        run.job.poll()
        time.sleep(0.05)
    assert run.job.progress == pytest.approx(0.5)
    run.job.cancel()
    assert run.job.state == "cancelled"
    with pytest.raises(QSMInputError, match="cancelled"):
        logic.load_results(run)
    assert scene.GetNumberOfNodes() == n0
    assert _job_dirs() - before == set()


def test_metadata_from_bids_sidecar(tmp_path):
    import json

    scene = slicer.vtkMRMLScene()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(tmp_path / "sub_phase.nii.gz"))
    (tmp_path / "sub_phase.json").write_text(json.dumps({"EchoTime": 0.0204, "MagneticFieldStrength": 7}))
    node = mrml.load_volume_with_storage_node(scene, tmp_path / "sub_phase.nii.gz")
    meta = QSMLogic(scene).metadata_defaults(node)
    assert meta["te_ms"] == [pytest.approx(20.4)] and meta["b0_t"] == 7.0


def test_sample_data_nodes():
    from nextqsm.sampledata import load_sample_into_scene

    scene = slicer.vtkMRMLScene()
    nodes = load_sample_into_scene(scene, shape=(40, 40, 36), voxel_size=(5.0, 5.0, 5.0))
    meta = QSMLogic(scene).metadata_defaults(nodes["phase"])
    assert meta == {"te_ms": [5.0], "b0_t": 3.0}
    ph = mrml.array_from_volume(nodes["phase"])
    assert ph.min() >= -np.pi - 1e-5 and ph.max() <= np.pi + 1e-5
    assert nodes["segmentation"].GetSegmentation().GetNumberOfSegments() >= 8


def test_helpers():
    assert parse_echo_times_ms("4.5, 9;13.5") == [4.5, 9.0, 13.5]
    with pytest.raises(QSMInputError):
        parse_echo_times_ms("4.5, x")
    assert parse_vector("0 0 1") == [0, 0, 1] and parse_vector("") is None
    root = ET.fromstring(comparison_layout_xml(3))
    tags = [v.get("singletontag") for v in root.iter("view")]
    assert len(tags) == 6 and len(set(tags)) == 6
    assert "torch 2.5" in describe_device_info({"torch": "2.5.1", "cuda_build": "12.4", "gpus": [
        {"name": "H100", "total_mb": 81559, "free_mb": 80000}]})
    assert describe_device_info({"torch": "2.13.0", "cpu_count": 2, "ram_available_mb": 4096,
                                 "cpu_bf16": True}).endswith("native bfloat16")
    assert "PyTorch not found" in describe_device_info({"torch": None})


def _local_field_in_scene(las_case):
    """(QSMLogic, local-field volume, mask labelmap) of the LAS case's phantom in a fresh scene."""
    ph, d = las_case["phantom"], las_case["dir"]
    nib.save(nib.Nifti1Image(ph.local_field.astype(np.float32), las_case["affine"]), str(d / "local.nii.gz"))
    scene = slicer.vtkMRMLScene()
    local = mrml.load_volume_with_storage_node(scene, d / "local.nii.gz", "local")
    mask = mrml.load_volume_with_storage_node(scene, d / "mask.nii.gz", "mask", labelmap=True)
    return QSMLogic(scene), local, mask

def test_gui_options_reach_nextqsm(las_case):
    """The module's NeXtQSM options (flips, TV refinement auto/on/off) become run_nextqsm parameters and
    change the chi the worker returns for a local field."""
    assert nextqsm_params(["tkd"], flips=8, refine="on") == {}
    assert nextqsm_params(["nextqsm"]) == {}
    assert nextqsm_params(["nextqsm", "tkd"], flips="4", refine="off") == {"nextqsm": {"tta": 4, "refine": False}}
    assert nextqsm_params(["nextqsm"], flips="auto") == {} and nextqsm_params(["nextqsm"], flips=1) == {"nextqsm": {"tta": 1}}
    with pytest.raises(ValueError, match="flips"):
        nextqsm_params(["nextqsm"], flips=3)
    assert nextqsm_params(["nextqsm"], refine="on") == {"nextqsm": {"refine": True}}
    with pytest.raises(ValueError, match="refine"):
        nextqsm_params(["nextqsm"], refine="maybe")
    assert nextqsm_params(["nextqsm"], bfr="lbv") == {"nextqsm": {"bfr": "lbv"}}
    assert nextqsm_params(["nextqsm"], bfr="auto") == {}
    with pytest.raises(ValueError, match="bfr"):
        nextqsm_params(["nextqsm"], bfr="pdf")
    pytest.importorskip("torch")
    logic, local, mask = _local_field_in_scene(las_case)
    chis = []
    for refine in ("auto", "off"):
        out = logic.run(local, mask, methods=["nextqsm"], phase_units="ppm", device="cpu", field_kind="local",
                        method_params=nextqsm_params(["nextqsm"], refine=refine), timeout=300)
        chis.append(mrml.array_from_volume(out.chi["nextqsm"]).copy())
    assert np.abs(chis[0]).max() > 0 and not np.allclose(chis[0], chis[1], atol=1e-6)


def test_chi_reference_option_through_the_logic(las_case):
    """The module's 'Chi reference: mean' option reaches every method through the worker: each chi then has zero mean
    over its mask, the same map as without it up to a constant."""
    from nextqsm.slicer_logic import with_reference

    assert with_reference({"nextqsm": {"tta": 2}}, ["nextqsm", "tkd"], "none") == {"nextqsm": {"tta": 2}}
    assert with_reference({"nextqsm": {"tta": 2}}, ["nextqsm", "tkd"], "mean") == {
        "nextqsm": {"tta": 2, "reference": "mean"}, "tkd": {"reference": "mean"}}
    with pytest.raises(ValueError):
        with_reference({}, ["tkd"], "csf")
    logic, local, mask = _local_field_in_scene(las_case)
    chis = []
    for ref in ("none", "mean"):
        out = logic.run(local, mask, methods=["tkd"], phase_units="ppm", device="cpu", field_kind="local",
                        method_params=with_reference({}, ["tkd"], ref), timeout=300)
        chis.append(mrml.array_from_volume(out.chi["tkd"]).copy())
    m = mrml.array_from_volume(mask) > 0
    inside = m & (chis[0] != 0)
    assert abs(chis[0][inside].mean()) > 1e-5 and abs(chis[1][inside].mean()) < 1e-5
    assert np.allclose(chis[1][inside] - chis[0][inside], -chis[0][inside].mean(), atol=1e-5)


def test_clinician_path_wrapped_phase_and_magnitude_without_mask():
    """Sample data as a clinician gets it: wrapped phase + magnitude, TE/B0 from the node, automatic mask."""
    from nextqsm.sampledata import load_sample_into_scene

    scene = slicer.vtkMRMLScene()
    nodes = load_sample_into_scene(scene, shape=(40, 40, 36), voxel_size=(5.0, 5.0, 5.0))
    logic = QSMLogic(scene)
    meta = logic.metadata_defaults(nodes["phase"])
    out = logic.run(nodes["phase"], None, nodes["magnitude"], methods=["tkd"], phase_units="wrapped_rad",
                    te_ms=meta["te_ms"], b0_t=meta["b0_t"], device="cpu", timeout=120)
    truth = mrml.array_from_volume(nodes["chi_true"])
    brain = mrml.array_from_volume(nodes["mask"]) > 0
    auto = mrml.array_from_volume(out.mask) > 0
    assert out.mask.IsA("vtkMRMLLabelMapVolumeNode")
    assert 2 * (auto & brain).sum() / (auto.sum() + brain.sum()) > 0.8  # magnitude-based mask ~ the brain
    chi = mrml.array_from_volume(out.chi["tkd"])
    inside = brain & (chi != 0)
    assert np.corrcoef(chi[inside], truth[inside])[0, 1] > 0.3
