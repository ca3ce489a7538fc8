"""Sample data: the project's simulated head (known chi), as files or as MRML nodes.

Built by ``nextqsm.phantom.make_phantom`` (no third-party data, no network). The sample
is a single-echo wrapped GRE phase at TE = 5 ms, B0 = 3 T (1 ppm = 4.0 rad), with its
magnitude, brain mask, tissue labels (as a segmentation) and the true chi [ppm].
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_NAME = "NeXtQSMSimulatedHead"
SAMPLE_SHAPE = (96, 96, 84)
SAMPLE_VOXEL_MM = (2.2, 2.2, 2.2)
SAMPLE_TE_MS = 5.0
SAMPLE_B0_T = 3.0
SAMPLE_SEED = 0
FILES = {"phase": "phase.nii.gz", "magnitude": "magnitude.nii.gz", "mask": "mask.nii.gz",
         "labels": "labels.nii.gz", "chi_true": "chi_true.nii.gz", "field": "total_field_ppm.nii.gz"}


def make_sample(shape=SAMPLE_SHAPE, voxel_size=SAMPLE_VOXEL_MM, seed: int = SAMPLE_SEED,
                te_ms: float = SAMPLE_TE_MS, b0_t: float = SAMPLE_B0_T) -> dict[str, Any]:
    """Arrays (i, j, k) of the sample: wrapped phase [rad], magnitude, mask, labels, chi [ppm], total field [ppm]."""
    from .phantom import make_phantom
    from .units import ppm_to_rad

    p = make_phantom(shape=shape, voxel_size=voxel_size, seed=seed)
    phase_unwrapped = ppm_to_rad(p.total_field, te_ms * 1e-3, b0_t)
    wrapped = np.angle(np.exp(1j * phase_unwrapped)).astype(np.float32)
    return {"phase": wrapped, "magnitude": p.magnitude.astype(np.float32), "mask": p.mask.astype(np.uint8),
            "labels": p.seg.astype(np.int16), "chi_true": p.chi.astype(np.float32),
            "field": p.total_field.astype(np.float32), "affine": p.affine, "label_names": dict(p.labels),
            "te_ms": te_ms, "b0_t": b0_t}


def write_sample_files(out_dir: str | os.PathLike, **kwargs) -> dict[str, Path]:
    """Write the sample as NIfTI (+ a BIDS sidecar for the phase with EchoTime [s] and MagneticFieldStrength [T])."""
    from .io import save_nifti, sidecar_path, write_json_atomic

    out = Path(out_dir)
    s = make_sample(**kwargs)
    paths = {}
    for key, fname in FILES.items():
        dtype = np.int16 if key in ("labels", "mask") else np.float32
        paths[key] = save_nifti(s[key], s["affine"], out / fname, dtype=dtype)
    write_json_atomic(sidecar_path(paths["phase"]), {"EchoTime": s["te_ms"] * 1e-3, "MagneticFieldStrength": s["b0_t"],
                                                     "Units": "rad (wrapped)"})
    write_json_atomic(out / "labels.json", {str(k): v for k, v in s["label_names"].items()})
    return paths


def default_cache_dir() -> Path:
    base = os.environ.get("NEXTQSM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "nextqsm")
    return Path(base) / "sampledata"


def ensure_sample_files(cache_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Sample files in the cache, written once."""
    d = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    paths = {k: d / f for k, f in FILES.items()}
    if not all(p.exists() for p in paths.values()):
        paths = write_sample_files(d)
    return paths


BRAIN_LABELS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 16)


def load_sample_into_scene(scene, **kwargs) -> dict[str, Any]:
    """Add the sample to ``scene``: phase, magnitude, mask (labelmap), segmentation (brain structures), chi_true."""
    from . import mrml

    s = make_sample(**kwargs)
    aff = s["affine"]
    nodes = {
        "phase": mrml.add_volume_node(scene, s["phase"], aff, "NeXtQSM sample phase (wrapped rad)"),
        "magnitude": mrml.add_volume_node(scene, s["magnitude"], aff, "NeXtQSM sample magnitude"),
        "mask": mrml.add_volume_node(scene, s["mask"].astype(np.int16), aff, "NeXtQSM sample brain mask",
                                     "vtkMRMLLabelMapVolumeNode"),
        "chi_true": mrml.add_volume_node(scene, s["chi_true"], aff, "NeXtQSM sample true chi (ppm)"),
    }
    nodes["phase"].SetAttribute("NeXtQSM.EchoTimes_ms", f"{s['te_ms']:g}")
    nodes["phase"].SetAttribute("NeXtQSM.B0_T", f"{s['b0_t']:g}")
    nodes["phase"].SetAttribute("NeXtQSM.PhaseUnits", "wrapped_rad")
    mrml.set_window_level(nodes["chi_true"])
    nodes["segmentation"] = labels_to_segmentation(scene, s["labels"], aff, s["label_names"], BRAIN_LABELS,
                                                   "NeXtQSM sample structures")
    return nodes


def labels_to_segmentation(scene, labels: np.ndarray, affine: np.ndarray, names: dict, keep=None, name: str = "labels"):
    """Segmentation node with one segment per kept label, named from ``names``."""
    import slicer

    from . import mrml

    lab = np.where(np.isin(labels, keep), labels, 0) if keep is not None else labels
    tmp = mrml.add_volume_node(scene, lab.astype(np.int16), affine, "__nextqsm_labels", "vtkMRMLLabelMapVolumeNode")
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(tmp, seg):
            raise RuntimeError("labelmap import failed")
    finally:
        mrml.remove_nodes([tmp])
    present = [int(v) for v in np.unique(lab) if v != 0]
    segmentation = seg.GetSegmentation()
    import re

    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        m = re.fullmatch(r"Label_(\d+)", segment.GetName() or "")
        v = int(m.group(1)) if m else (present[i] if i < len(present) else None)  # imported as "Label_<value>"
        if v is not None:
            segment.SetName(names.get(v, f"label {v}"))
    return seg


def register_sample_data() -> None:
    """Register the sample in Slicer's Sample Data module (inside Slicer only); files are written on first use."""
    import SampleData  # Slicer module; only available inside the application

    icon = Path(__file__).resolve().parents[1] / "Resources" / "Icons" / "NeXtQSM.png"
    cache = default_cache_dir()
    uris = [(cache / FILES[k]).as_uri() for k in ("phase", "magnitude", "mask", "chi_true")]

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="NeXtQSM", sampleName=SAMPLE_NAME, uris=uris,
        fileNames=[FILES[k] for k in ("phase", "magnitude", "mask", "chi_true")],
        nodeNames=["NeXtQSM sample phase (wrapped rad)", "NeXtQSM sample magnitude", "NeXtQSM sample brain mask",
                   "NeXtQSM sample true chi (ppm)"],
        thumbnailFileName=str(icon), loadFileType=["VolumeFile", "VolumeFile", "VolumeFile", "VolumeFile"],
        checksums=None)
    # The files must exist before Sample Data copies them: write them once, in a background
    # subprocess so that application start-up is not delayed (the module's "Load sample data"
    # button builds the nodes directly and needs no files).
    if not all((cache / f).exists() for f in FILES.values()):
        import subprocess

        from .jobs import worker_env, worker_python

        subprocess.Popen([worker_python(), "-m", "nextqsm.sampledata", str(cache)], env=worker_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv=None) -> int:
    """``python -m nextqsm.sampledata OUT_DIR``: write the sample files."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    out = argv[0] if argv else str(default_cache_dir())
    for k, p in write_sample_files(out).items():
        print(f"{k}: {p}")
    print(f"phase: wrapped rad at TE {SAMPLE_TE_MS} ms, B0 {SAMPLE_B0_T} T ({2 * math.pi * SAMPLE_TE_MS * 1e-3 * 42.576 * SAMPLE_B0_T:.2f} rad/ppm)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
