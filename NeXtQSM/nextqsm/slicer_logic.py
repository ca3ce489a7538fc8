"""The logic behind the NeXtQSM Slicer module, without Qt (usable with ``slicer-core`` and in tests).

``NeXtQSM.py``'s ``NeXtQSMLogic`` delegates here. Typical console use inside Slicer::

    from nextqsm.slicer_logic import QSMLogic
    logic = QSMLogic()                                    # uses slicer.mrmlScene
    out = logic.run(phaseNode, maskNode, methods=["nextqsm", "tgv"],
                    phase_units="wrapped_rad", te_ms=[20.0], b0_t=3.0)
    out.chi["tgv"]                                        # vtkMRMLScalarVolumeNode, chi in ppm
    table, chart = logic.roi_table(out.chi, segmentationNode, phaseNode)

Work happens in a worker subprocess (``nextqsm.jobs``); nodes are created only after the
worker succeeded, so a failure or a cancel leaves the scene unchanged.
"""
from __future__ import annotations

import json

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from . import mrml
from .errors import QSMInputError
from .jobs import SUCCEEDED, Job

METHOD_LABELS = {"nextqsm": "NeXtQSM", "tgv": "TGV", "vsharp-ilsqr": "VSHARP-iLSQR", "vsharp-tv": "VSHARP-TV",
                 "pdf-tv": "PDF-TV", "lbv-tv": "LBV-TV", "vsharp-l2": "VSHARP-L2", "tkd": "TKD", "unet-baseline": "UNet-baseline"}
"""Method name -> the label used in node names, tables and views."""

PHASE_UNITS = {"wrapped_rad": "wrapped phase [rad]", "unwrapped_rad": "unwrapped phase [rad]",
               "hz": "frequency [Hz]", "ppm": "field [ppm]"}
ATTR = "NeXtQSM."  # prefix of node attributes written by the module


def method_label(name: str) -> str:
    return METHOD_LABELS.get(name, name)


def parse_echo_times_ms(text: str | Sequence[float] | None) -> list[float]:
    """'4.5, 9 13.5' (ms) -> [4.5, 9.0, 13.5]; raises QSMInputError on junk."""
    if text is None or text == "":
        return []
    if isinstance(text, (list, tuple)):
        vals = [float(v) for v in text]
    else:
        try:
            vals = [float(v) for v in str(text).replace(",", " ").replace(";", " ").split()]
        except ValueError as exc:
            raise QSMInputError("echo times", f"cannot read {text!r} as numbers",
                                "type the echo times in ms separated by commas, e.g. 4.5, 9, 13.5") from exc
    if any(not np.isfinite(v) or v <= 0 for v in vals):
        raise QSMInputError("echo times", f"echo times must be positive, got {vals}", "type them in ms, e.g. 20")
    return vals


def parse_vector(text: str | Sequence[float] | None) -> Optional[list[float]]:
    """'0 0 1' -> [0, 0, 1]; '' or None -> None."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    vals = [float(v) for v in (text if isinstance(text, (list, tuple)) else str(text).replace(",", " ").split())]
    if len(vals) != 3:
        raise QSMInputError("B0 direction", f"needs three numbers, got {vals}", "type e.g. 0 0 1")
    return vals


#: NeXtQSM's background removal choices in the module ('auto': the shipped default, LBV for voxels <= 2.25 mm,
#: else V-SHARP; see ``nextqsm.models.inference.default_bfr``).
def _bfr_options() -> tuple[str, ...]:
    from .models.inference import BFR_CHOICES   # torch-free at import

    return ("auto", *BFR_CHOICES)


BFR_OPTIONS = _bfr_options()


def nextqsm_params(methods: Sequence[str], flips: int | str = "auto", refine: str = "auto", bfr: str = "auto") -> dict:
    """Per-method parameters from the module's GUI options, for ``method_params``.

    ``flips``: NeXtQSM's test-time flips (``tta``: 1 = off, 2, 4, 8; 'auto': the shipped weights' default for the
    device, see ``nextqsm.models.inference.default_tta``); ``refine``: 'auto' (the pipeline's default: the TV
    refinement for a local field given by the user, none after background removal), 'on' or 'off';
    ``bfr``: one of :data:`BFR_OPTIONS` (background removal of a total field before the VN).
    """
    if refine not in ("auto", "on", "off"):
        raise ValueError(f"refine must be 'auto', 'on' or 'off', got {refine!r}")
    if bfr not in BFR_OPTIONS:
        raise ValueError(f"bfr must be one of {BFR_OPTIONS}, got {bfr!r}")
    if "nextqsm" not in methods:
        return {}
    p: dict = {}
    if str(flips) != "auto":
        if str(flips) not in ("1", "2", "4", "8"):
            raise ValueError(f"flips must be 'auto', 1, 2, 4 or 8, got {flips!r}")
        p["tta"] = int(flips)
    if refine != "auto":
        p["refine"] = refine == "on"
    if bfr != "auto":
        p["bfr"] = bfr
    return {"nextqsm": p} if p else {}


def with_reference(params: dict, methods: Sequence[str], reference: str = "none") -> dict:
    """``params`` ({method: {param: value}}) with every method's chi referenced (``reference``: 'none' | 'mean';
    :func:`nextqsm.pipeline.apply_reference`). Returns a new dict."""
    if reference not in ("none", "mean"):
        raise ValueError(f"reference must be 'none' or 'mean', got {reference!r}")
    out = {m: dict(p) for m, p in params.items()}
    if reference != "none":
        for m in methods:
            out.setdefault(m, {})["reference"] = reference
    return out


def comparison_layout_xml(n_views: int, tag_prefix: str = "NeXtQSM") -> str:
    """Slicer layout XML: two rows (axial, coronal) of ``n_views`` slice views each.

    View tags are ``<prefix>Ax<i>`` and ``<prefix>Co<i>`` (i = 1..n). Method columns first,
    the difference view last.
    """
    colors = ["#F34A33", "#6EB04B", "#EDD54C", "#4A90D9", "#B05FC9", "#E89B3C", "#5CC9C0", "#999999"]

    def row(orient: str, code: str) -> str:
        items = []
        for i in range(1, n_views + 1):
            items.append(
                f'<item><view class="vtkMRMLSliceNode" singletontag="{tag_prefix}{code}{i}">'
                f'<property name="orientation" action="default">{orient}</property>'
                f'<property name="viewlabel" action="default">{code[0]}{i}</property>'
                f'<property name="viewcolor" action="default">{colors[(i - 1) % len(colors)]}</property>'
                f'</view></item>')
        return '<item><layout type="horizontal">' + "".join(items) + "</layout></item>"

    return '<layout type="vertical">' + row("Axial", "Ax") + row("Coronal", "Co") + "</layout>"


@dataclass
class QSMRun:
    """A started run: the job, the node that defines the geometry, and what to name the outputs."""

    job: Job
    reference: Any
    methods: list[str]
    base_name: str
    request: dict = field(default_factory=dict)


@dataclass
class QSMOutputs:
    """Nodes created by a successful run. ``chi[method]``, ``local_field[method]`` (when computed), ``mask``."""

    chi: dict = field(default_factory=dict)
    local_field: dict = field(default_factory=dict)
    mask: Any = None
    timings: dict = field(default_factory=dict)
    device: str = ""

    def __getitem__(self, method: str):
        return self.chi[method]

    def nodes(self) -> list:
        return [*self.chi.values(), *self.local_field.values(), *([self.mask] if self.mask is not None else [])]


class QSMLogic:
    """Qt-free logic: export nodes -> worker subprocess -> result nodes, ROI tables and plots.

    ``scene``: the MRML scene (default ``slicer.mrmlScene`` inside Slicer; pass a
    ``slicer.vtkMRMLScene()`` with slicer-core). ``python``: worker interpreter (default:
    PythonSlicer in Slicer, ``sys.executable`` elsewhere).
    """

    def __init__(self, scene=None, python: Optional[str] = None) -> None:
        self._scene = scene
        self.python = python

    @property
    def scene(self):
        if self._scene is None:
            import slicer

            self._scene = slicer.mrmlScene
        return self._scene

    # ------------------------------------------------------------------ metadata
    def metadata_defaults(self, node) -> dict:
        """Echo times [ms] and B0 [T] from node attributes, a BIDS JSON sidecar or DICOM, when present."""
        out: dict[str, Any] = {}
        if node is None:
            return out
        nodes = [node]
        if node.IsA("vtkMRMLSequenceNode") and node.GetNumberOfDataNodes():
            nodes = [node.GetNthDataNode(i) for i in range(node.GetNumberOfDataNodes())]
        te = node.GetAttribute(ATTR + "EchoTimes_ms")
        if te:
            out["te_ms"] = parse_echo_times_ms(te)
        b0 = node.GetAttribute(ATTR + "B0_T")
        if b0:
            out["b0_t"] = float(b0)
        tes: list[float] = []
        for n in nodes:
            sc = self._sidecar(n)
            if "EchoTime" in sc and "te_ms" not in out:
                v = sc["EchoTime"]
                tes.extend([float(x) * 1e3 for x in (v if isinstance(v, list) else [v])])
            if "MagneticFieldStrength" in sc and "b0_t" not in out:
                out["b0_t"] = float(sc["MagneticFieldStrength"])
            dic = self._dicom_values(n)
            if "te_ms" in dic and "te_ms" not in out:
                tes.append(dic["te_ms"])
            if "b0_t" in dic and "b0_t" not in out:
                out["b0_t"] = dic["b0_t"]
        if tes and "te_ms" not in out:
            out["te_ms"] = tes
        return out

    @staticmethod
    def _sidecar(node) -> dict:
        sn = node.GetStorageNode() if hasattr(node, "GetStorageNode") else None
        fn = sn.GetFileName() if sn is not None else None
        if not fn:
            return {}
        from .io import read_sidecar

        try:
            return read_sidecar(fn)
        except QSMInputError:
            return {}

    @staticmethod
    def _dicom_values(node) -> dict:
        uids = node.GetAttribute("DICOM.instanceUIDs")
        if not uids:
            return {}
        try:
            import slicer

            db = slicer.dicomDatabase
            uid = uids.split()[0]
            fn = db.fileForInstance(uid)
            te, b0 = db.fileValue(fn, "0018,0081"), db.fileValue(fn, "0018,0087")
        except Exception:  # noqa: BLE001 (no DICOM database outside the full application)
            return {}
        out = {}
        if te:
            out["te_ms"] = float(te)
        if b0:
            out["b0_t"] = float(b0)
        return out

    # ------------------------------------------------------------------ requests
    def prepare_request(self, phase, mask=None, magnitude=None, methods: Sequence[str] = ("nextqsm",),
                        phase_units: str = "ppm", te_ms: Sequence[float] | str | None = None, b0_t: float = 3.0,
                        b0_dir: Optional[Sequence[float]] = None, device: str = "auto", field_kind: str = "total",
                        method_params: Optional[dict] = None, work_dir: Optional[Path] = None,
                        extra: Optional[dict] = None) -> tuple[dict, Any, Path]:
        """Export the inputs to NIfTI in ``work_dir`` and build the worker request; returns (request, reference, dir)."""
        if phase_units not in PHASE_UNITS:
            raise QSMInputError("phase units", f"unknown units {phase_units!r}", f"choose one of {', '.join(PHASE_UNITS)}")
        methods = list(methods)
        if not methods:
            raise QSMInputError("methods", "no method selected", "tick at least one method")
        te = parse_echo_times_ms(te_ms)
        work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="nextqsm_job_"))
        try:
            phase_path, ref, n_echo = mrml.write_echoes_nifti(phase, work / "phase.nii.gz")
            if phase_units in ("wrapped_rad", "unwrapped_rad") and len(te) != n_echo:
                raise QSMInputError("echo times", f"{len(te)} echo time(s) for {n_echo} echo(es)",
                                    "type one TE in ms per echo, e.g. 4.5, 9, 13.5")
            req: dict[str, Any] = {"action": "run", "phase": phase_path, "phase_units": phase_units,
                                   "te_s": [t * 1e-3 for t in te], "b0_t": float(b0_t),
                                   "b0_dir": list(b0_dir) if b0_dir is not None else None,
                                   "methods": methods, "device": device, "field_kind": field_kind,
                                   "method_params": method_params or {}}
            affine = mrml.world_ijk_to_ras(ref)
            if magnitude is not None:
                marr, mref = mrml.echo_arrays(magnitude)
                if marr.shape[:3] != tuple(ref.GetImageData().GetDimensions()) or \
                        not np.allclose(mrml.world_ijk_to_ras(mref), affine, atol=1e-2):
                    raise QSMInputError("magnitude", "is not on the phase grid", "select the magnitude of the same acquisition")
                from .io import save_nifti

                req["magnitude"] = str(save_nifti(marr, affine, work / "magnitude.nii.gz"))
            if mask is not None:
                from .io import save_nifti

                req["mask"] = str(save_nifti(mrml.mask_array(mask, ref).astype(np.float32), affine,
                                             work / "mask.nii.gz"))
            if extra:
                req.update(extra)
        except BaseException:
            if work_dir is None:
                import shutil

                shutil.rmtree(work, ignore_errors=True)
            raise
        return req, ref, work

    def start(self, phase, mask=None, magnitude=None, methods: Sequence[str] = ("nextqsm",),
              progress: Optional[Callable[[float, str], None]] = None, **kwargs) -> QSMRun:
        """Start the worker (returns at once); poll ``run.job.poll()`` and call :meth:`load_results` when done."""
        req, ref, work = self.prepare_request(phase, mask, magnitude, methods, **kwargs)
        job = Job(req, work_dir=work, python=self.python, own_dir=True)  # removes the exported inputs too
        if progress is not None:
            job.progressChanged.connect(progress)
        base = (phase[0] if isinstance(phase, (list, tuple)) else phase).GetName() or "phase"
        job.start()
        return QSMRun(job=job, reference=ref, methods=list(methods), base_name=base, request=req)

    def load_results(self, run: QSMRun, keep_mask: bool = True, keep_local_field: bool = True) -> QSMOutputs:
        """Create the output nodes of a finished run (all or nothing), then remove its temporary files."""
        job = run.job
        if job.state != SUCCEEDED:
            raise QSMInputError("run", f"the computation {job.state}: {job.error}", "fix the input and run again")
        res = job.result
        out = QSMOutputs(device=res.get("device", ""))
        created: list = []
        try:
            for m in run.methods:
                entry = res["methods"][m]
                lab = method_label(m)
                chi = mrml.load_array_into_new_node(job.out_dir / entry["chi"], run.reference,
                                                    f"{run.base_name}_chi_{lab}", scene=self.scene)
                created.append(chi)
                self._tag(chi, m, "chi", "ppm")
                # how it was produced (the CLI's sidecar, as node attributes saved with the scene)
                chi.SetAttribute(ATTR + "parameters", json.dumps(entry.get("params", {}), default=str, sort_keys=True))
                chi.SetAttribute(ATTR + "device", str(entry.get("device", res.get("device", ""))))
                mrml.set_window_level(chi)
                out.chi[m] = chi
                out.timings[m] = entry.get("timings", {})
                if keep_local_field and entry.get("local_field"):
                    lf = mrml.load_array_into_new_node(job.out_dir / entry["local_field"], run.reference,
                                                       f"{run.base_name}_localfield_{lab}", scene=self.scene)
                    created.append(lf)
                    self._tag(lf, m, "local_field", "ppm")
                    mrml.set_window_level(lf, -0.05, 0.05)
                    out.local_field[m] = lf
            if keep_mask and res.get("mask"):
                from .io import load_nifti

                marr = load_nifti(job.out_dir / res["mask"], ndim=3).data
                out.mask = mrml.create_output_volume(run.reference, marr.astype(np.int16), f"{run.base_name}_qsm_mask",
                                                     scene=self.scene, class_name="vtkMRMLLabelMapVolumeNode")
                created.append(out.mask)
        except BaseException:
            mrml.remove_nodes(created)
            raise
        finally:
            job.cleanup()
        return out

    @staticmethod
    def _tag(node, method: str, quantity: str, unit: str) -> None:
        node.SetAttribute(ATTR + "method", method)
        node.SetAttribute(ATTR + "quantity", quantity)
        node.SetAttribute(ATTR + "unit", unit)

    def run(self, phase, mask=None, magnitude=None, methods: Sequence[str] = ("nextqsm",),
            progress: Optional[Callable[[float, str], None]] = None, timeout: Optional[float] = None,
            **kwargs) -> QSMOutputs:
        """Synchronous: start the worker, wait, create the output nodes. Raises QSMInputError on failure."""
        run = self.start(phase, mask, magnitude, methods, progress=progress, **kwargs)
        state = run.job.wait(timeout=timeout)
        if state != SUCCEEDED:
            if not run.job.done:
                run.job.cancel()
            raise QSMInputError("QSM run", f"{run.job.state}: {run.job.error}", "fix the reported input and run again")
        return self.load_results(run)

    # ------------------------------------------------------------------ comparison
    def difference(self, a, b, name: Optional[str] = None):
        """New node a - b (same grid), chi window (-0.1..0.1 ppm)."""
        arr = mrml.array_from_volume(a, np.float32) - mrml.array_from_volume(b, np.float32)
        node = mrml.create_output_volume(a, arr, name or f"{a.GetName()} minus {b.GetName()}", scene=self.scene)
        node.SetAttribute(ATTR + "quantity", "chi_difference")
        mrml.set_window_level(node, -0.1, 0.1)
        return node

    def roi_rows(self, chi_nodes: dict, roi_node, reference=None) -> list[dict]:
        """ROI statistics rows (mean, SD of chi per segment/label per method)."""
        from .roi import roi_statistics

        if not chi_nodes:
            raise QSMInputError("results", "no chi maps to measure", "run at least one method first")
        reference = reference or next(iter(chi_nodes.values()))
        labels, names = mrml.label_array(roi_node, reference)
        arrays = {method_label(m): mrml.array_from_volume(n, np.float32) for m, n in chi_nodes.items()}
        return roi_statistics(arrays, labels, names)

    def roi_table(self, chi_nodes: dict, roi_node, reference=None, name: str = "NeXtQSM ROI statistics"):
        """vtkMRMLTableNode (ROI, label, voxels, <method> mean/SD [ppm]) and a bar vtkMRMLPlotChartNode."""
        from .roi import mean_columns

        rows = self.roi_rows(chi_nodes, roi_node, reference)
        table = mrml.table_from_rows(self.scene, rows, name)
        chart = mrml.bar_chart(self.scene, table, "ROI", mean_columns([method_label(m) for m in chi_nodes]),
                               name + " chart")
        return table, chart

    # ------------------------------------------------------------------ devices
    def device_info(self, timeout: float = 120.0) -> dict:
        """GPU, torch version and CUDA build as seen by the worker interpreter (not this process)."""
        from .jobs import query_device_info

        return query_device_info(timeout=timeout, python=self.python)


def describe_device_info(info: dict) -> str:
    """One line for the GUI: 'torch 2.5.1 (CUDA 12.4) · NVIDIA H100 80 GB, 79 GB free' or the reason."""
    if info.get("error"):
        return f"device query failed: {info['error']}"
    if not info.get("torch"):
        return "PyTorch not found: install the PyTorch extension (only TKD/V-SHARP methods available)"
    s = f"torch {info['torch']}" + (f" (CUDA {info['cuda_build']} build)" if info.get("cuda_build") else " (CPU build)")
    if info.get("gpus"):
        g = info["gpus"][0]
        s += f" - {g['name']}, {g['total_mb'] / 1024:.0f} GB ({g['free_mb'] / 1024:.0f} GB free)"
    else:
        s += f" - no CUDA GPU; CPU with {info.get('cpu_count')} cores, {info.get('ram_available_mb', 0) / 1024:.1f} GB RAM free"
        if info.get("cpu_bf16"):
            s += ", native bfloat16"
    return s


def save_outputs_json(outputs: QSMOutputs, path) -> None:
    """Node names and timings of a run, for reports."""
    from .io import write_json_atomic

    write_json_atomic(path, {"chi": {m: n.GetName() for m, n in outputs.chi.items()},
                             "local_field": {m: n.GetName() for m, n in outputs.local_field.items()},
                             "timings": outputs.timings, "device": outputs.device})


__all__ = ["QSMLogic", "QSMOutputs", "QSMRun", "comparison_layout_xml", "describe_device_info", "method_label",
           "parse_echo_times_ms", "parse_vector"]
