"""MRML glue against slicer-core (a real vtkMRMLScene, volume and storage nodes; no Slicer application).

Geometry is checked physically: a bright voxel at a known RAS point must stay at that point
through file -> Slicer reader (which flips left-handed NIfTI along k) -> array -> result node
-> file, for oblique and left-handed (LAS) data.
"""
from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core==5.12.4.0) is needed")
nib = pytest.importorskip("nibabel")

from nextqsm import mrml  # noqa: E402
from nextqsm.geometry import b0_direction, oblique_affine  # noqa: E402

SHAPE = (9, 8, 7)
BRIGHT = (2, 5, 1)  # deliberately asymmetric in every axis (a k-flip moves it)


def _affines():
    ras = np.diag([1.5, 1.0, 2.0, 1.0])
    ras[:3, 3] = [-6.0, 3.0, 10.0]
    obl = oblique_affine((1.0, 1.2, 2.0), 25.0, "x", SHAPE)
    las = np.diag([-1.0, 1.5, 2.0, 1.0])  # left-handed: Slicer's reader flips it along k
    las[:3, 3] = [4.0, -5.0, 7.0]
    las_obl = oblique_affine((1.0, 1.0, 1.5), 20.0, "y", SHAPE) @ np.diag([-1.0, 1, 1, 1])
    return {"ras": ras, "oblique": obl, "las": las, "las_oblique": las_obl}


AFFINES = _affines()


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


def _bright_volume():
    a = np.zeros(SHAPE, np.float32)
    a[BRIGHT] = 100.0
    a[0, 0, 0] = 1.0
    return a


def _bright_ras(node):
    arr = mrml.array_from_volume(node)
    ijk = np.unravel_index(np.argmax(arr), arr.shape)
    return mrml.ijk_to_ras_point(node, ijk)


def test_array_roundtrip_is_ijk_order(scene):
    a = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    node = mrml.add_volume_node(scene, a, AFFINES["oblique"], "x")
    # MRML's own accessor is (k, j, i): our conversion is the only transpose
    assert slicer.util.arrayFromVolume(node).shape == SHAPE[::-1]
    np.testing.assert_array_equal(mrml.array_from_volume(node), a)
    np.testing.assert_allclose(mrml.ijk_to_ras(node), AFFINES["oblique"], atol=1e-9)
    b = a * 2
    mrml.update_volume_from_array(node, b)
    np.testing.assert_array_equal(mrml.array_from_volume(node), b)


def test_vector_volume_and_echo_list(scene):
    a = np.random.default_rng(1).normal(size=SHAPE + (3,)).astype(np.float32)
    vec = mrml.add_volume_node(scene, a, AFFINES["ras"], "echoes", "vtkMRMLVectorVolumeNode")
    arr, ref = mrml.echo_arrays(vec)
    np.testing.assert_array_equal(arr, a)
    assert ref is vec
    nodes = [mrml.add_volume_node(scene, a[..., e], AFFINES["ras"], f"e{e}") for e in range(3)]
    arr2, _ = mrml.echo_arrays(nodes)
    np.testing.assert_array_equal(arr2, a)
    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "seq")
    for e, n in enumerate(nodes):
        seq.SetDataNodeAtValue(n, str(e))
    arr3, ref3 = mrml.echo_arrays(seq)
    np.testing.assert_array_equal(arr3, a)
    np.testing.assert_allclose(mrml.ijk_to_ras(ref3), AFFINES["ras"])


@pytest.mark.parametrize("kind", list(AFFINES))
def test_nifti_read_by_slicer_keeps_physical_positions(scene, tmp_path, kind):
    aff = AFFINES[kind]
    f = tmp_path / f"{kind}.nii.gz"
    nib.save(nib.Nifti1Image(_bright_volume(), aff), str(f))
    expected_ras = (aff @ np.array([*BRIGHT, 1.0]))[:3]

    node = mrml.load_volume_with_storage_node(scene, f)
    left_handed = np.linalg.det(aff[:3, :3]) < 0
    arr = mrml.array_from_volume(node)
    file_index_kept = arr[BRIGHT] == 100.0
    # Slicer flips left-handed files along k: the array index changes, the RAS position does not
    assert file_index_kept != left_handed
    np.testing.assert_allclose(_bright_ras(node), expected_ras, atol=1e-4)

    # through a result node with the input's geometry (what the logic does with chi)
    out = mrml.create_output_volume(node, arr * 2, "result")
    np.testing.assert_allclose(mrml.ijk_to_ras(out), mrml.ijk_to_ras(node), atol=1e-9)
    np.testing.assert_allclose(_bright_ras(out), expected_ras, atol=1e-4)

    # written by nibabel from the node (the worker's input) and by Slicer's writer
    p1 = tmp_path / "via_nibabel.nii.gz"
    mrml.volume_to_nifti(out, p1)
    p2 = tmp_path / "via_slicer.nii.gz"
    mrml.save_volume_with_storage_node(out, p2)
    for p in (p1, p2):
        img = nib.load(str(p))
        d = np.asarray(img.dataobj)
        ijk = np.unravel_index(np.argmax(d), d.shape)
        np.testing.assert_allclose((img.affine @ np.array([*ijk, 1.0]))[:3], expected_ras, atol=1e-3)
        assert d.max() == pytest.approx(200.0)


def test_b0_direction_follows_the_flip(scene, tmp_path):
    """B0 in voxel axes from IJKToRAS: for a flipped (LAS oblique) file the forward field still lands right."""
    from nextqsm.dipole import forward_field

    aff = AFFINES["las_oblique"]
    chi = np.zeros((20, 18, 16), np.float32)
    chi[5:8, 10:14, 3:6] = 1.0  # an off-centre block
    f = tmp_path / "chi.nii.gz"
    nib.save(nib.Nifti1Image(chi, aff), str(f))
    vs = tuple(np.linalg.norm(aff[:3, :3], axis=0))
    field_file = forward_field(chi, vs, b0_direction(aff))

    node = mrml.load_volume_with_storage_node(scene, f)
    flip = np.diag([1.0, 1, -1, 1])
    flip[2, 3] = chi.shape[2] - 1
    np.testing.assert_allclose(mrml.ijk_to_ras(node), aff @ flip, atol=1e-4)  # the k-flip is in IJKToRAS
    b_node = mrml.b0_direction_of(node)
    assert b_node != pytest.approx(b0_direction(aff))  # voxel-axis B0 differs after the flip...
    field_node = forward_field(mrml.array_from_volume(node), mrml.voxel_size_of(node), b_node)
    out = mrml.create_output_volume(node, field_node, "field")
    p = tmp_path / "field.nii.gz"
    mrml.volume_to_nifti(out, p)
    img = nib.load(str(p))
    back = np.asarray(img.dataobj)[..., ::-1]  # ...but the physical field is the same
    scale = np.abs(field_file).max()
    # (tolerance: zero padding to a fast FFT length is not symmetric under the flip)
    np.testing.assert_allclose(back, field_file, atol=5e-3 * scale)
    wrong = forward_field(mrml.array_from_volume(node), mrml.voxel_size_of(node), b0_direction(aff))[..., ::-1]
    assert np.abs(wrong - field_file).max() > 0.1 * scale  # using the file's B0 on the flipped array is wrong
    assert mrml.b0_direction_of(node, override=(0, 0, 2)) == pytest.approx((0, 0, 1))


def test_segmentation_and_labelmap_to_label_array(scene):
    from nextqsm.sampledata import labels_to_segmentation

    aff = AFFINES["oblique"]
    ref = mrml.add_volume_node(scene, np.zeros(SHAPE, np.float32), aff, "ref")
    lab = np.zeros(SHAPE, np.int16)
    lab[1:4, 1:3, 1:3] = 3
    lab[5:8, 4:7, 2:6] = 7
    seg = labels_to_segmentation(scene, lab, aff, {3: "putamen", 7: "thalamus"})
    labels, names = mrml.label_array(seg, ref)
    assert sorted(names.values()) == ["putamen", "thalamus"]
    inv = {v: k for k, v in names.items()}
    np.testing.assert_array_equal(labels == inv["putamen"], lab == 3)
    np.testing.assert_array_equal(labels == inv["thalamus"], lab == 7)
    n_before = scene.GetNumberOfNodes()
    mrml.mask_array(seg, ref)
    assert scene.GetNumberOfNodes() == n_before  # temporary labelmap removed

    lm = mrml.add_volume_node(scene, lab, aff, "lm", "vtkMRMLLabelMapVolumeNode")
    labels2, names2 = mrml.label_array(lm, ref)
    np.testing.assert_array_equal(labels2, lab)
    assert set(names2) == {3, 7}
    other = mrml.add_volume_node(scene, lab, AFFINES["ras"], "elsewhere", "vtkMRMLLabelMapVolumeNode")
    from nextqsm.errors import QSMInputError

    with pytest.raises(QSMInputError, match="not on the grid"):
        mrml.label_array(other, ref)


def test_table_and_bar_chart(scene):
    rows = [{"ROI": "caudate", "label": 1.0, "A mean": 0.07, "A SD": 0.01},
            {"ROI": "putamen", "label": 3.0, "A mean": 0.06, "A SD": 0.02}]
    t = mrml.table_from_rows(scene, rows, "stats")
    assert t.GetNumberOfRows() == 2 and t.GetNumberOfColumns() == 4
    assert mrml.rows_from_table(t) == rows
    chart = mrml.bar_chart(scene, t, "ROI", ["A mean"], "chart")
    assert chart.GetNumberOfPlotSeriesNodes() == 1
    series = chart.GetNthPlotSeriesNode(0)
    assert series.GetPlotType() == series.PlotTypeBar and series.GetYColumnName() == "A mean"


def test_window_level_preset(scene):
    node = mrml.add_volume_node(scene, np.zeros(SHAPE, np.float32), AFFINES["ras"], "chi")
    mrml.set_window_level(node)
    d = node.GetDisplayNode()
    assert d.GetWindow() == pytest.approx(0.40) and d.GetLevel() == pytest.approx(0.05)
