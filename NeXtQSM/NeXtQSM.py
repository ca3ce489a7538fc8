"""NeXtQSM: quantitative susceptibility mapping in 3D Slicer (deep learning and classical references).

Thin module shell: the work is done by the Qt-free library ``nextqsm`` (this folder), the
heavy part in a worker subprocess (PythonSlicer), so torch is never imported here.
Console API::

    logic = slicer.util.getModuleLogic("NeXtQSM")
    out = logic.run(phaseNode, maskNode, methods=["nextqsm", "tgv"], phase_units="wrapped_rad", te_ms=[20], b0_t=3)
    out.chi["tgv"]  # chi [ppm] volume node with the phase's geometry
"""
import importlib.metadata
import importlib.util
import logging
from typing import Annotated, Optional, Union

import ctk  # noqa: F401  (custom widgets in the .ui)
import qt
import slicer
import vtk
from slicer import (vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode,
                    vtkMRMLSequenceNode)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

MIN_TORCH_VERSION = (2, 2)
METHOD_PARAMETERS = {  # method name -> parameter node field (check box)
    "nextqsm": "useNeXtQSM", "tgv": "useTGV", "vsharp-ilsqr": "useVSharpILSQR", "vsharp-tv": "useVSharpTV",
    "pdf-tv": "usePDFTV", "lbv-tv": "useLBVTV", "vsharp-l2": "useVSharpL2", "tkd": "useTKD",
}


class NeXtQSM(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "NeXtQSM"
        self.parent.categories = ["Quantification"]
        self.parent.dependencies = []
        self.parent.contributors = ["NeXtQSM for Slicer contributors"]
        self.parent.helpText = (
            "Quantitative susceptibility mapping (QSM) from GRE phase: NeXtQSM (deep learning) and reference "
            "methods (TGV, V-SHARP + iLSQR, TKD, ...) side by side. Chi maps are in ppm. "
            "See the README for the console API.")
        self.parent.acknowledgementText = (
            "NeXtQSM: Cognolato et al., Medical Image Analysis 2023. TGV-QSM: Langkammer et al. 2015.")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Register the project's simulated head (known chi) in the Sample Data module."""
    try:
        from nextqsm.sampledata import register_sample_data

        register_sample_data()
    except Exception as exc:  # noqa: BLE001 (never break application start-up)
        logging.warning(f"NeXtQSM sample data not registered: {exc}")


@parameterNodeWrapper
class NeXtQSMParameterNode:
    """Choices saved with the scene."""

    phaseVolume: Union[vtkMRMLScalarVolumeNode, vtkMRMLSequenceNode]
    magnitudeVolume: Union[vtkMRMLScalarVolumeNode, vtkMRMLSequenceNode]
    maskNode: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]
    phaseUnits: Annotated[str, Choice(["wrapped_rad", "unwrapped_rad", "hz", "ppm"])] = "wrapped_rad"
    fieldKind: Annotated[str, Choice(["total", "local"])] = "total"
    echoTimesMs: str = ""
    b0Tesla: Annotated[float, WithinRange(0.1, 21.1)] = 3.0
    overrideB0Direction: bool = False
    b0Direction: str = "0 0 1"
    useNeXtQSM: bool = True
    useTGV: bool = False
    useVSharpILSQR: bool = False
    useVSharpTV: bool = False
    usePDFTV: bool = False
    useLBVTV: bool = False
    useVSharpL2: bool = False
    useTKD: bool = False
    device: Annotated[str, Choice(["auto", "cuda", "cpu"])] = "auto"
    nextqsmFlips: Annotated[str, Choice(["auto", "1", "2", "4", "8"])] = "auto"
    nextqsmRefine: Annotated[str, Choice(["auto", "on", "off"])] = "auto"
    nextqsmBfr: Annotated[str, Choice(["auto", "vsharp", "lbv", "unet"])] = "auto"
    chiReference: Annotated[str, Choice(["none", "mean"])] = "none"
    roiNode: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]


class NeXtQSMWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._infoJob = None
        self._outputs = None
        self._timer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/NeXtQSM.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = NeXtQSMLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self.onTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.refreshDeviceButton.connect("clicked(bool)", self.onRefreshDevice)
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)
        self.ui.roiTableButton.connect("clicked(bool)", self.onRoiTableButton)
        self.ui.loadSampleButton.connect("clicked(bool)", self.onLoadSample)
        self.ui.phaseSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onPhaseChanged)
        self.ui.b0DirectionOverrideCheckBox.connect("toggled(bool)", self._updateB0DirectionLabel)
        self.ui.b0DirectionLineEdit.connect("textChanged(QString)", self._updateB0DirectionLabel)
        self.ui.progressBar.setRange(0, 1000)

        self.initializeParameterNode()
        qt.QTimer.singleShot(0, self.onRefreshDevice)  # GPU / torch / CUDA build, asked of the worker interpreter

    def cleanup(self) -> None:
        if self._run is not None and not self._run.job.done:
            self._run.job.cancel()
        if self._infoJob is not None and not self._infoJob.done:
            self._infoJob.cancel()
        if self._timer is not None:
            self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.phaseVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.phaseVolume = first

    def setParameterNode(self, inputParameterNode: Optional[NeXtQSMParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    # ------------------------------------------------------------------ state
    def selectedMethods(self) -> list:
        p = self._parameterNode
        return [m for m, field in METHOD_PARAMETERS.items() if p is not None and getattr(p, field)]

    def _checkCanApply(self, caller=None, event=None) -> None:
        p = self._parameterNode
        running = self._run is not None and not self._run.job.done
        ok = bool(p and p.phaseVolume and self.selectedMethods()) and not running
        self.ui.applyButton.enabled = ok
        self.ui.applyButton.toolTip = "Run the selected methods" if ok else "Select a phase volume and at least one method"
        self.ui.cancelButton.enabled = running
        self.ui.b0DirectionLineEdit.enabled = bool(p and p.overrideB0Direction)
        self._updateB0DirectionLabel()

    def _updateB0DirectionLabel(self, *args) -> None:
        p = self._parameterNode
        if not p or not p.phaseVolume:
            self.ui.b0DirectionLabel.text = "select a phase volume"
            return
        try:
            b = self.logic.b0Direction(p.phaseVolume, p.b0Direction if p.overrideB0Direction else None)
            src = "override" if p.overrideB0Direction else "from the volume orientation"
            self.ui.b0DirectionLabel.text = f"({b[0]:.3f}, {b[1]:.3f}, {b[2]:.3f}) {src}"
        except Exception as exc:  # noqa: BLE001 (show the problem, do not raise in a slot)
            self.ui.b0DirectionLabel.text = str(exc)

    def onPhaseChanged(self, node) -> None:
        if node is None or self._parameterNode is None:
            return
        meta = self.logic.metadataDefaults(node)
        if meta.get("te_ms"):
            self._parameterNode.echoTimesMs = ", ".join(f"{t:g}" for t in meta["te_ms"])
        if meta.get("b0_t"):
            self._parameterNode.b0Tesla = float(meta["b0_t"])

    # ------------------------------------------------------------------ run
    def onApplyButton(self) -> None:
        p = self._parameterNode
        methods = self.selectedMethods()
        if self.logic.needsTorch(methods) and not self.logic.ensureTorch(askConsent=True):
            return
        with slicer.util.tryWithErrorDisplay("NeXtQSM could not start.", waitCursor=True):
            self._run = self.logic.start(
                p.phaseVolume, p.maskNode, p.magnitudeVolume, methods=methods, phase_units=p.phaseUnits,
                te_ms=p.echoTimesMs, b0_t=p.b0Tesla,
                b0_dir=self.logic.parseVector(p.b0Direction) if p.overrideB0Direction else None,
                device=p.device, field_kind=p.fieldKind, progress=self._onProgress,
                method_params=self.logic.methodParams(methods, nextqsmFlips=p.nextqsmFlips,
                                                     nextqsmRefine=p.nextqsmRefine, nextqsmBfr=p.nextqsmBfr,
                                                     reference=p.chiReference))
            self.ui.progressBar.value = 0
            self.ui.stageLabel.text = "starting the worker..."
            self._timer.start()
        self._checkCanApply()

    def _onProgress(self, fraction: float, stage: str) -> None:
        self.ui.progressBar.value = int(1000 * fraction)
        self.ui.stageLabel.text = stage

    def onTimer(self) -> None:
        if self._infoJob is not None and not self._infoJob.poll():
            job, self._infoJob = self._infoJob, None
            self.ui.deviceInfoLabel.text = self.logic.describeDeviceJob(job)
        if self._run is not None and not self._run.job.poll():
            run, self._run = self._run, None
            self._finishRun(run)
        if self._run is None and self._infoJob is None:
            self._timer.stop()
        self._checkCanApply()

    def _finishRun(self, run) -> None:
        if run.job.state == "cancelled":
            self.ui.stageLabel.text = "Cancelled: no output was created."
            self.ui.progressBar.value = 0
            return
        if run.job.state != "succeeded":
            self.ui.stageLabel.text = "Failed."
            slicer.util.errorDisplay(f"NeXtQSM failed: {run.job.error}", detailedText="\n".join(run.job.log))
            return
        with slicer.util.tryWithErrorDisplay("Could not load the NeXtQSM results.", waitCursor=True):
            self._outputs = self.logic.loadResults(run)
            first = next(iter(self._outputs.chi.values()))
            slicer.util.setSliceViewerLayers(background=first, fit=True)
            times = ", ".join(f"{m}: {t.get('total', 0):.1f} s" for m, t in self._outputs.timings.items())
            self.ui.stageLabel.text = f"Done on {self._outputs.device} ({times})."

    def onCancelButton(self) -> None:
        if self._run is not None:
            self._run.job.cancel()
            self.ui.stageLabel.text = "Cancelling..."

    def onRefreshDevice(self) -> None:
        if self._infoJob is not None:
            return
        self.ui.deviceInfoLabel.text = "querying the worker..."
        self._infoJob = self.logic.startDeviceQuery()
        self._timer.start()

    def onLoadSample(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not create the sample data.", waitCursor=True):
            nodes = self.logic.loadSample()
            self._parameterNode.phaseVolume = nodes["phase"]
            self._parameterNode.maskNode = nodes["mask"]
            self._parameterNode.magnitudeVolume = nodes["magnitude"]
            self._parameterNode.roiNode = nodes["segmentation"]
            self._parameterNode.phaseUnits = "wrapped_rad"
            self.onPhaseChanged(nodes["phase"])

    # ------------------------------------------------------------------ comparison
    def _resultNodes(self) -> dict:
        if self._outputs is not None and all(n.GetScene() is not None for n in self._outputs.chi.values()):
            return dict(self._outputs.chi)
        return self.logic.findResultNodes(self._parameterNode.phaseVolume)

    def onCompareButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Comparison failed.", waitCursor=True):
            self.logic.showComparison(self._resultNodes())

    def onRoiTableButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("ROI statistics failed.", waitCursor=True):
            table, chart = self.logic.roiTable(self._resultNodes(), self._parameterNode.roiNode)
            self.logic.showTableAndChart(table, chart)


class NeXtQSMLogic(ScriptedLoadableModuleLogic):
    """Slicer-side logic; all computation is in ``nextqsm.slicer_logic.QSMLogic`` (Qt-free)."""

    COMPARISON_LAYOUT_ID = 50701

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        from nextqsm.slicer_logic import QSMLogic

        self.core = QSMLogic(slicer.mrmlScene)

    def getParameterNode(self):
        return NeXtQSMParameterNode(super().getParameterNode())

    # console API ---------------------------------------------------------------
    def run(self, phaseNode, maskNode=None, magnitudeNode=None, methods=("nextqsm",), **kwargs):
        """Compute QSM synchronously; returns ``QSMOutputs`` (``.chi[method]`` volume nodes, ppm).

        kwargs: phase_units ('wrapped_rad'|'unwrapped_rad'|'hz'|'ppm'), te_ms, b0_t, b0_dir, device,
        field_kind ('total'|'local'), method_params {method: {param: value}}, progress, timeout.
        """
        if self.needsTorch(methods) and not self.ensureTorch(askConsent=False):
            raise RuntimeError("PyTorch is needed for " + ", ".join(self.needsTorch(methods))
                               + ": install the PyTorch extension (PyTorchUtils)")
        return self.core.run(phaseNode, maskNode, magnitudeNode, methods=list(methods), **kwargs)

    @staticmethod
    def methodParams(methods, nextqsmFlips: str = "auto", nextqsmRefine: str = "auto", nextqsmBfr: str = "auto",
                     reference: str = "none") -> dict:
        """Per-method parameters from the GUI's options (``nextqsm.slicer_logic.nextqsm_params``, ``with_reference``)."""
        from nextqsm.slicer_logic import nextqsm_params, with_reference

        return with_reference(nextqsm_params(methods, flips=nextqsmFlips, refine=nextqsmRefine, bfr=nextqsmBfr),
                              methods, reference)

    def start(self, phaseNode, maskNode=None, magnitudeNode=None, methods=("nextqsm",), **kwargs):
        return self.core.start(phaseNode, maskNode, magnitudeNode, methods=list(methods), **kwargs)

    def loadResults(self, run):
        return self.core.load_results(run)

    def metadataDefaults(self, node) -> dict:
        return self.core.metadata_defaults(node)

    def b0Direction(self, node, override=None):
        from nextqsm import mrml

        if node.IsA("vtkMRMLSequenceNode"):
            node = node.GetNthDataNode(0)
        return mrml.b0_direction_of(node, self.parseVector(override) if override else None)

    @staticmethod
    def parseVector(text):
        from nextqsm.slicer_logic import parse_vector

        return parse_vector(text)

    def roiTable(self, chiNodes: dict, roiNode):
        if roiNode is None:
            raise ValueError("Select a segmentation or labelmap in 'ROIs' first.")
        return self.core.roi_table(chiNodes, roiNode)

    def findResultNodes(self, phaseNode=None) -> dict:
        """chi nodes created by this module (newest per method), optionally for one input."""
        out = {}
        for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
            if node.GetAttribute("NeXtQSM.quantity") != "chi":
                continue
            if phaseNode is not None and not node.GetName().startswith(phaseNode.GetName() + "_chi_"):
                continue
            out[node.GetAttribute("NeXtQSM.method")] = node
        return out

    # torch via the PyTorch extension ------------------------------------------
    @staticmethod
    def needsTorch(methods) -> list:
        """The methods in ``methods`` that need PyTorch (from the registry; torch is not imported)."""
        from nextqsm.pipeline import METHODS

        return [m for m in methods if m in METHODS and METHODS[m].needs_torch]

    @staticmethod
    def torchVersion() -> Optional[str]:
        """Installed torch version (from package metadata: torch is NOT imported in the GUI process)."""
        if importlib.util.find_spec("torch") is None:
            return None
        try:
            return importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            return None

    def ensureTorch(self, askConsent: bool = True) -> bool:
        """True when a recent enough torch is installed; otherwise offer the PyTorch extension's installer."""
        version = self.torchVersion()
        if version is not None:
            major_minor = tuple(int(x) for x in version.split("+")[0].split(".")[:2])
            if major_minor >= MIN_TORCH_VERSION:
                return True
            msg = f"PyTorch {version} is older than the required {'.'.join(map(str, MIN_TORCH_VERSION))}."
        else:
            msg = "PyTorch is not installed."
        if not askConsent:
            return False
        try:
            import PyTorchUtils
        except ImportError:
            slicer.util.errorDisplay(msg + " Install the 'PyTorch' extension from the Extensions Manager, restart Slicer, "
                                     "and try again (or choose methods that do not need PyTorch, e.g. TKD).")
            return False
        if not slicer.util.confirmOkCancelDisplay(msg + " Install it now with the PyTorch extension? "
                                                  "(This downloads several GB for the CUDA build.)"):
            return False
        # PyTorchUtils installs a build matching the NVIDIA driver (light-the-torch) and imports torch once
        # to verify it; the QSM work itself still runs in the worker process.
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        torch = torchLogic.installTorch(askConfirmation=False,
                                        torchVersionRequirement=f">={'.'.join(map(str, MIN_TORCH_VERSION))}")
        return torch is not None

    # devices --------------------------------------------------------------------
    def startDeviceQuery(self):
        from nextqsm.jobs import Job

        return Job({"action": "info"}, python=self.core.python).start()

    @staticmethod
    def describeDeviceJob(job) -> str:
        from nextqsm.slicer_logic import describe_device_info

        try:
            if job.state != "succeeded":
                return f"device query failed: {job.error}"
            return describe_device_info(job.result.get("info", {}))
        finally:
            job.cleanup()

    # sample data ------------------------------------------------------------------
    def loadSample(self) -> dict:
        from nextqsm.sampledata import load_sample_into_scene

        return load_sample_into_scene(slicer.mrmlScene)

    # views ------------------------------------------------------------------------
    def showComparison(self, chiNodes: dict) -> None:
        """Linked side-by-side layout: one column per method, then the difference of the first two."""
        from nextqsm.slicer_logic import comparison_layout_xml, method_label

        if not chiNodes:
            raise ValueError("Run at least one method first.")
        nodes = list(chiNodes.items())
        views = [n for _, n in nodes]
        if len(nodes) >= 2:
            (ma, a), (mb, b) = nodes[0], nodes[1]
            name = f"chi difference {method_label(ma)} - {method_label(mb)}"
            diff = slicer.mrmlScene.GetFirstNodeByName(name)
            if diff is not None:
                slicer.mrmlScene.RemoveNode(diff)
            views.append(self.core.difference(a, b, name))
        layoutManager = slicer.app.layoutManager()
        xml = comparison_layout_xml(len(views))
        layoutNode = layoutManager.layoutLogic().GetLayoutNode()
        if layoutNode.IsLayoutDescription(self.COMPARISON_LAYOUT_ID):
            layoutNode.SetLayoutDescription(self.COMPARISON_LAYOUT_ID, xml)
        else:
            layoutNode.AddLayoutDescription(self.COMPARISON_LAYOUT_ID, xml)
        layoutManager.setLayout(self.COMPARISON_LAYOUT_ID)
        for i, volume in enumerate(views, start=1):
            for code in ("Ax", "Co"):
                sliceWidget = layoutManager.sliceWidget(f"NeXtQSM{code}{i}")
                if sliceWidget is None:
                    continue
                composite = sliceWidget.sliceLogic().GetSliceCompositeNode()
                composite.SetBackgroundVolumeID(volume.GetID())
                composite.SetForegroundVolumeID(None)
                composite.SetLabelVolumeID(None)
                composite.SetLinkedControl(True)
                composite.SetHotLinkedControl(True)
                sliceWidget.sliceLogic().FitSliceToAll()

    @staticmethod
    def showTableAndChart(table, chart) -> None:
        slicer.modules.plots.logic().ShowChartInLayout(chart)
        selectionNode = slicer.app.applicationLogic().GetSelectionNode()
        selectionNode.SetActiveTableID(table.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()


class NeXtQSMTest(ScriptedLoadableModuleTest):
    """Self-test: a tiny synthetic head, CPU, two classical methods; < 1 minute."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_TinyPipeline()

    def test_TinyPipeline(self):
        import numpy as np

        from nextqsm import mrml
        from nextqsm.phantom import make_phantom
        from nextqsm.pipeline import available_methods

        self.delayDisplay("Creating a tiny simulated head")
        ph = make_phantom(shape=(40, 40, 36), voxel_size=(5.0, 5.0, 5.0), seed=3)
        phase = mrml.add_volume_node(slicer.mrmlScene, ph.total_field, ph.affine, "tinyField")
        mask = mrml.add_volume_node(slicer.mrmlScene, ph.mask.astype(np.int16), ph.affine, "tinyMask",
                                    "vtkMRMLLabelMapVolumeNode")
        avail = available_methods()
        methods = ["tkd"] + [m for m in ("vsharp-l2", "vsharp-tv", "tgv") if m in avail][:1]  # r = 0.62, 0.64 here
        self.assertIn("tkd", avail)
        self.delayDisplay(f"Running {methods} in the worker")
        logic = NeXtQSMLogic()
        out = logic.core.run(phase, mask, methods=methods, phase_units="ppm", device="cpu",
                             method_params={"tgv": {"iterations": 100}}, timeout=120)
        ref = mrml.ijk_to_ras(phase)
        for m in methods:
            node = out.chi[m]
            self.assertTrue(np.allclose(mrml.ijk_to_ras(node), ref))
            chi = mrml.array_from_volume(node)
            inside = ph.mask & (chi != 0)  # V-SHARP erodes the mask: compare where chi was reconstructed
            r = np.corrcoef(chi[inside], ph.chi[inside])[0, 1]
            self.assertGreater(r, 0.3, f"{m}: correlation with the true chi {r:.2f}")
        seg = mrml.add_volume_node(slicer.mrmlScene, ph.seg.astype(np.int16), ph.affine, "tinySeg",
                                   "vtkMRMLLabelMapVolumeNode")
        table, chart = logic.roiTable(out.chi, seg)
        self.assertGreater(table.GetNumberOfRows(), 3)
        self.delayDisplay("Test passed")
