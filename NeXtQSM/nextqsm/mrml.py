"""MRML glue: volume nodes <-> numpy arrays, geometry, segmentations, tables and plots.

Qt-free. ``slicer`` and ``vtk`` are imported lazily, so this module is importable (and
its pure-numpy helpers usable) without them. It works inside 3D Slicer and with the
``slicer-core`` wheel from PyPI (``pip install slicer-core``), which provides the same
``slicer`` namespace (``slicer.vtkMRMLScene``, ``slicer.util.arrayFromVolume``, ...) but
no application (``slicer.app``) and no global ``slicer.mrmlScene``. Every function that
creates nodes therefore takes the scene explicitly (or uses the reference node's scene).

Geometry conventions
--------------------
* Arrays returned and accepted here are in nibabel voxel order (i, j, k[, c]).
  MRML's ``arrayFromVolume`` is (k, j, i[, c]); :func:`array_from_volume` and
  :func:`update_volume_from_array` are the ONE place that converts.
* A node's IJKToRAS matrix *is* the NIfTI affine: both map (i, j, k) to RAS+ world mm.
  (ITK and DICOM use LPS; Slicer converts on read, so RAS is what the node holds.)
* Slicer flips left-handed NIfTI files along k when reading them (ITK cannot store a
  left-handed direction); the flip is encoded in IJKToRAS, so the array index of a voxel
  changes but its RAS position does not. Everything here derives geometry from
  IJKToRAS, never from array position, and output nodes copy the input node's geometry.
* B0 lies along the scanner z axis, which is RAS "S" (NIfTI RAS+ and Slicer RAS share z);
  its direction in voxel axes is ``nextqsm.geometry.b0_direction(IJKToRAS)``.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

import numpy as np

from .errors import QSMInputError

QSM_WINDOW_LEVEL_PPM = (-0.15, 0.25)
"""Default display range for chi maps [ppm] (window 0.40, level 0.05)."""


def _slicer():
    import slicer  # noqa: WPS433 (lazy on purpose)

    return slicer


def _util():
    import slicer.util as su

    return su


def _vtk():
    import vtk

    return vtk


def scene_of(node) -> Any:
    """The node's scene (raises when the node is not in a scene)."""
    scene = node.GetScene()
    if scene is None:
        raise QSMInputError(node.GetName() or "node", "is not in a MRML scene", "add the node to the scene first")
    return scene


# --------------------------------------------------------------------------- geometry

def ijk_to_ras(node) -> np.ndarray:
    """4x4 IJKToRAS matrix of a volume node (== the NIfTI affine of its (i, j, k) array)."""
    vtk = _vtk()
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def set_ijk_to_ras(node, affine: np.ndarray) -> None:
    """Set origin, spacing and directions of a volume node from a 4x4 (NIfTI/RAS) affine."""
    vtk = _vtk()
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise QSMInputError("affine", "is not a finite 4x4 matrix", "pass the IJKToRAS/NIfTI affine of the volume")
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    node.SetIJKToRASMatrix(m)


def copy_geometry(src, dst) -> None:
    """Give ``dst`` the IJKToRAS (origin, spacing, directions) of ``src``."""
    set_ijk_to_ras(dst, ijk_to_ras(src))


def voxel_size_of(node) -> tuple[float, float, float]:
    """Spacing in mm along i, j, k (from IJKToRAS)."""
    from .geometry import voxel_size

    return voxel_size(ijk_to_ras(node), name=node.GetName() or "volume")


def b0_direction_of(node, override: Optional[Sequence[float]] = None) -> tuple[float, float, float]:
    """B0 unit vector in the node's voxel axes: R^-1 (0, 0, 1) with R from IJKToRAS; ``override`` wins."""
    from .geometry import b0_direction

    return b0_direction(ijk_to_ras(node), override, name="B0 direction")


def ras_to_ijk(node, ras: Sequence[float]) -> np.ndarray:
    """Continuous (i, j, k) index of a RAS point (mm)."""
    p = np.append(np.asarray(ras, dtype=np.float64), 1.0)
    return (np.linalg.inv(ijk_to_ras(node)) @ p)[:3]


def ijk_to_ras_point(node, ijk: Sequence[float]) -> np.ndarray:
    """RAS position (mm) of voxel index (i, j, k)."""
    p = np.append(np.asarray(ijk, dtype=np.float64), 1.0)
    return (ijk_to_ras(node) @ p)[:3]


def has_parent_transform(node) -> bool:
    return node.GetParentTransformNode() is not None


# --------------------------------------------------------------------------- arrays

def array_from_volume(node, dtype=None) -> np.ndarray:
    """Voxel array of a volume node in (i, j, k) order ((i, j, k, c) for vector volumes); a copy."""
    if node is None or node.GetImageData() is None:
        name = node.GetName() if node is not None else "volume"
        raise QSMInputError(name, "has no image data", "select a volume that contains voxels")
    a = _util().arrayFromVolume(node)  # (k, j, i[, c]) view
    a = np.ascontiguousarray(np.swapaxes(a, 0, 2))  # the one conversion k,j,i -> i,j,k
    return a.astype(dtype, copy=False) if dtype is not None else a


def update_volume_from_array(node, array_ijk: np.ndarray) -> None:
    """Replace the voxels of ``node`` by ``array_ijk`` ((i, j, k) or (i, j, k, c)); geometry unchanged."""
    a = np.asarray(array_ijk)
    if a.ndim not in (3, 4):
        raise QSMInputError(node.GetName() or "volume", f"expected a 3D or 4D array, got shape {a.shape}",
                            "pass (i, j, k) or (i, j, k, components)")
    _util().updateVolumeFromArray(node, np.ascontiguousarray(np.swapaxes(a, 0, 2)))


def add_volume_node(scene, array_ijk: np.ndarray, affine: np.ndarray, name: str,
                    class_name: str = "vtkMRMLScalarVolumeNode") -> Any:
    """New volume node in ``scene`` holding ``array_ijk`` with IJKToRAS = ``affine``."""
    node = scene.AddNewNodeByClass(class_name, name)
    update_volume_from_array(node, array_ijk)
    set_ijk_to_ras(node, affine)
    return node


def create_output_volume(reference, array_ijk: np.ndarray, name: str, scene=None,
                         class_name: str = "vtkMRMLScalarVolumeNode") -> Any:
    """New volume node with ``reference``'s geometry (IJKToRAS, parent transform) and ``array_ijk`` voxels."""
    scene = scene or scene_of(reference)
    ref_shape = tuple(reference.GetImageData().GetDimensions())
    if tuple(np.asarray(array_ijk).shape[:3]) != ref_shape:
        raise QSMInputError(name, f"array shape {np.asarray(array_ijk).shape[:3]} differs from the reference grid {ref_shape}",
                            "produce outputs on the input grid")
    node = add_volume_node(scene, array_ijk, ijk_to_ras(reference), name, class_name)
    if reference.GetParentTransformNode() is not None:
        node.SetAndObserveTransformNodeID(reference.GetParentTransformNode().GetID())
    return node


def set_window_level(node, lo: float = QSM_WINDOW_LEVEL_PPM[0], hi: float = QSM_WINDOW_LEVEL_PPM[1]) -> None:
    """Grey display with window/level covering [lo, hi] (the QSM preset by default)."""
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    d = node.GetDisplayNode()
    if d is None:
        return
    d.AutoWindowLevelOff()
    d.SetWindowLevel(float(hi - lo), float(hi + lo) / 2.0)
    scene = node.GetScene()
    grey = scene.GetNodeByID("vtkMRMLColorTableNodeGrey") if scene is not None else None
    if grey is not None:
        d.SetAndObserveColorNodeID(grey.GetID())


# --------------------------------------------------------------------------- NIfTI via nibabel

def volume_to_nifti(node, path, dtype=np.float32) -> str:
    """Write a volume node to NIfTI with affine = IJKToRAS (arrays (i, j, k[, c]) -> NIfTI (i, j, k[, t]))."""
    from .io import save_nifti

    affine = world_ijk_to_ras(node)  # a linear parent transform is folded into the affine
    return str(save_nifti(array_from_volume(node), affine, path, dtype=dtype))


def world_ijk_to_ras(node) -> np.ndarray:
    """IJKToRAS including a linear parent transform (if any); nonlinear transforms are refused."""
    a = ijk_to_ras(node)
    t = node.GetParentTransformNode()
    if t is None:
        return a
    if not t.IsTransformToWorldLinear():
        raise QSMInputError(node.GetName(), "is under a non-linear transform",
                            "harden the transform (Data module: right-click > Harden transform) first")
    vtk = _vtk()
    m = vtk.vtkMatrix4x4()
    t.GetMatrixTransformToWorld(m)
    tm = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    return tm @ a


def load_array_into_new_node(path, reference, name: str, scene=None) -> Any:
    """Read a NIfTI written on the reference grid and add it as a node with the reference's geometry.

    The file's affine must equal the reference's (world) IJKToRAS to within 1e-3 mm, so a result
    can never land at a different physical position than its input.
    """
    from .geometry import same_geometry
    from .io import load_nifti

    vol = load_nifti(path, ndim=3, name=name)
    if not same_geometry(vol.affine, world_ijk_to_ras(reference), tol_mm=1e-3):
        raise QSMInputError(name, "the result's affine differs from the input's", "report this as a bug")
    return create_output_volume(reference, vol.data, name, scene=scene)


def load_volume_with_storage_node(scene, path, name: Optional[str] = None,
                                  class_name: str = "vtkMRMLScalarVolumeNode", labelmap: bool = False) -> Any:
    """Read a file the way Slicer does (ITK reader via vtkMRMLVolumeArchetypeStorageNode).

    Left-handed NIfTI files come back flipped along k with the flip in IJKToRAS.
    """
    from pathlib import Path

    if labelmap:
        class_name = "vtkMRMLLabelMapVolumeNode"
    node = scene.AddNewNodeByClass(class_name, name or Path(path).name.split(".")[0])
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    if labelmap:
        storage.SetCenterImage(False)
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise QSMInputError(str(path), "Slicer could not read the file", "pass a valid NIfTI file")
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def save_volume_with_storage_node(node, path) -> None:
    """Write a node the way Slicer does (vtkMRMLVolumeArchetypeStorageNode)."""
    scene = scene_of(node)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    try:
        if not storage.WriteData(node):
            raise QSMInputError(str(path), "Slicer could not write the file", "check the folder exists and is writable")
    finally:
        scene.RemoveNode(storage)


# --------------------------------------------------------------------------- multi-echo inputs

def echo_arrays(phase) -> tuple[np.ndarray, Any]:
    """Phase input as a 4D array (i, j, k, echo) and the node that carries the geometry.

    ``phase`` may be a scalar volume node (one echo), a vector volume node (echoes as
    components), a sequence node of volume nodes, or a list/tuple of volume nodes on one grid.
    """
    if isinstance(phase, (list, tuple)):
        nodes = [n for n in phase if n is not None]
        if not nodes:
            raise QSMInputError("phase", "no phase volume selected", "select the phase volume(s)")
        ref = nodes[0]
        arrays = []
        for n in nodes:
            if not np.allclose(world_ijk_to_ras(n), world_ijk_to_ras(ref), atol=1e-3):
                raise QSMInputError(n.GetName(), f"is not on the grid of {ref.GetName()}",
                                    "resample all echoes onto one grid")
            arrays.append(array_from_volume(n, np.float32))
        if len({a.shape for a in arrays}) != 1:
            raise QSMInputError("phase", "the echo volumes have different shapes", "resample all echoes onto one grid")
        return np.stack(arrays, axis=-1), ref
    if phase is None:
        raise QSMInputError("phase", "no phase volume selected", "select the phase volume")
    if phase.IsA("vtkMRMLSequenceNode"):
        nodes = [phase.GetNthDataNode(i) for i in range(phase.GetNumberOfDataNodes())]
        if not nodes or not all(n is not None and n.IsA("vtkMRMLVolumeNode") for n in nodes):
            raise QSMInputError(phase.GetName(), "is not a sequence of volumes", "select a volume sequence")
        arr, _ = echo_arrays(nodes)
        return arr, nodes[0]
    a = array_from_volume(phase, np.float32)
    if a.ndim == 3:
        a = a[..., None]
    return a, phase


def write_echoes_nifti(phase, path) -> tuple[str, Any, int]:
    """Write the phase input as a 4D NIfTI (i, j, k, echo); returns (path, geometry node, number of echoes)."""
    from .io import save_nifti

    arr, ref = echo_arrays(phase)
    save_nifti(arr, world_ijk_to_ras(ref), path)
    return str(path), ref, int(arr.shape[-1])


# --------------------------------------------------------------------------- masks and segmentations

def label_array(node, reference) -> tuple[np.ndarray, dict[int, str]]:
    """Integer label array (i, j, k) on ``reference``'s grid and {label: name}.

    ``node`` is a labelmap volume (names from its color table when present) or a
    segmentation (one label per segment, 1..N in segment order, names = segment names).
    """
    slicer = _slicer()
    if node is None:
        raise QSMInputError("ROI", "no labelmap or segmentation selected", "select one")
    if node.IsA("vtkMRMLSegmentationNode"):
        vtk = _vtk()
        scene = scene_of(reference)
        ids = vtk.vtkStringArray()
        seg = node.GetSegmentation()
        seg.GetSegmentIDs(ids)
        if ids.GetNumberOfValues() == 0:
            raise QSMInputError(node.GetName(), "has no segments", "add at least one segment")
        names = {i + 1: seg.GetSegment(ids.GetValue(i)).GetName() for i in range(ids.GetNumberOfValues())}
        before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
        tmp = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__nextqsm_tmp_labels")
        try:
            ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(node, ids, tmp, reference)
            if not ok:
                raise QSMInputError(node.GetName(), "could not be exported to the volume grid",
                                    "check that the segmentation overlaps the volume")
            labels = array_from_volume(tmp).astype(np.int32)
        finally:
            # remove the temporary labelmap and what the export added (display, color table)
            new = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
            for n in new:
                if n.GetID() not in before and not n.IsA("vtkMRMLSubjectHierarchyNode"):
                    scene.RemoveNode(n)
        return labels, names
    if node.IsA("vtkMRMLVolumeNode"):
        if not np.allclose(world_ijk_to_ras(node), world_ijk_to_ras(reference), atol=1e-2) or \
                tuple(node.GetImageData().GetDimensions()) != tuple(reference.GetImageData().GetDimensions()):
            raise QSMInputError(node.GetName(), f"is not on the grid of {reference.GetName()}",
                                "resample it onto the phase volume (Resample Scalar/Vector/DWI Volume module)")
        labels = np.rint(array_from_volume(node)).astype(np.int32)
        names = {}
        color = node.GetDisplayNode().GetColorNode() if node.GetDisplayNode() is not None else None
        for v in np.unique(labels):
            if v == 0:
                continue
            nm = color.GetColorName(int(v)) if color is not None else None
            names[int(v)] = nm if nm and nm != "(none)" else f"label {int(v)}"
        return labels, names
    raise QSMInputError(node.GetName(), f"is a {node.GetClassName()}", "select a labelmap volume or a segmentation")


def mask_array(node, reference) -> np.ndarray:
    """Binary mask (i, j, k, bool) on ``reference``'s grid from a labelmap/scalar volume (>0) or a segmentation (union)."""
    labels, _ = label_array(node, reference)
    m = labels > 0
    if not m.any():
        raise QSMInputError(node.GetName(), "is empty on the phase grid", "select a mask that covers the brain")
    return m


def _remove_with_display(scene, node) -> None:
    for i in range(node.GetNumberOfDisplayNodes()):
        d = node.GetNthDisplayNode(i)
        if d is not None:
            scene.RemoveNode(d)
    if node.GetStorageNode() is not None:
        scene.RemoveNode(node.GetStorageNode())
    scene.RemoveNode(node)


def remove_nodes(nodes: Iterable) -> None:
    """Remove nodes (and their display/storage nodes) from their scenes."""
    for n in nodes:
        if n is not None and n.GetScene() is not None:
            _remove_with_display(n.GetScene(), n)


# --------------------------------------------------------------------------- tables and plots

def table_from_rows(scene, rows: list[dict], name: str, columns: Optional[list[str]] = None) -> Any:
    """vtkMRMLTableNode from a list of dicts (str columns stay strings, numbers become doubles)."""
    vtk = _vtk()
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    cols = columns or (list(rows[0].keys()) if rows else [])
    table = node.GetTable()
    for c in cols:
        is_str = any(isinstance(r.get(c), str) for r in rows)
        arr = vtk.vtkStringArray() if is_str else vtk.vtkDoubleArray()
        arr.SetName(c)
        for r in rows:
            v = r.get(c)
            if is_str:
                arr.InsertNextValue("" if v is None else str(v))
            else:
                arr.InsertNextValue(float("nan") if v is None else float(v))
        table.AddColumn(arr)
    node.Modified()
    return node


def rows_from_table(node) -> list[dict]:
    """Inverse of :func:`table_from_rows` (for tests and the console)."""
    t = node.GetTable()
    cols = [t.GetColumn(i) for i in range(t.GetNumberOfColumns())]
    out = []
    for r in range(t.GetNumberOfRows()):
        row = {}
        for c in cols:
            v = c.GetValue(r)
            row[c.GetName()] = v if isinstance(v, str) else float(v)
        out.append(row)
    return out


_PALETTE = [(0.90, 0.30, 0.20), (0.30, 0.60, 0.90), (0.40, 0.70, 0.30), (0.95, 0.75, 0.20),
            (0.60, 0.40, 0.80), (0.50, 0.50, 0.50), (0.20, 0.80, 0.80), (0.90, 0.50, 0.70)]


def bar_chart(scene, table_node, label_column: str, value_columns: list[str], name: str,
              y_title: str = "mean chi [ppm]") -> Any:
    """vtkMRMLPlotChartNode with one bar series per value column, categories from ``label_column``."""
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    for i, col in enumerate(value_columns):
        s = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} {col}")
        s.SetAndObserveTableNodeID(table_node.GetID())
        s.SetXColumnName("")  # bars at indexes 0..N-1, labelled by label_column
        s.SetLabelColumnName(label_column)
        s.SetYColumnName(col)
        s.SetPlotType(s.PlotTypeBar)
        s.SetColor(*_PALETTE[i % len(_PALETTE)])
        chart.AddAndObservePlotSeriesNodeID(s.GetID())
    chart.SetTitle(name)
    chart.SetXAxisTitle("ROI")
    chart.SetYAxisTitle(y_title)
    return chart
