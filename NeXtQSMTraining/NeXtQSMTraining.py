"""NeXtQSMTraining: the hybrid training-data generator and the trainer, inside 3D Slicer.

A headless-first module: the same logic as the ``nextqsm-train`` command line
(``nextqsm_training.cli``), reachable from

* the Python console::

      logic = slicer.util.getModuleLogic("NeXtQSMTraining")
      logic.cli(["fit", "--config", "/path/config.yaml", "--max-steps", "200"])  # subprocess, returns the exit code
      nodes = logic.makePairNodes(seed=0, size=64)  # one simulated training pair as volume nodes

* a batch run without the main window::

      Slicer --no-main-window --python-script NeXtQSMTraining/NeXtQSMTraining.py fit --config cfg.yaml

* a small panel (arguments line, Run, Cancel, log).

Work runs in a subprocess (PythonSlicer), so torch is never imported in the GUI process.
"""
from __future__ import annotations

import logging
import os
import sys

import qt
import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)


def _ensure_paths() -> None:
    """Make ``nextqsm`` (sibling NeXtQSM module) and ``nextqsm_training`` importable."""
    here = os.path.dirname(os.path.abspath(__file__))
    for p in (here, os.path.join(os.path.dirname(here), "NeXtQSM")):
        if os.path.isdir(p) and p not in sys.path:
            sys.path.append(p)


_ensure_paths()


class NeXtQSMTraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "NeXtQSM Training"
        self.parent.categories = ["Quantification"]
        self.parent.dependencies = []
        self.parent.contributors = ["NeXtQSM for Slicer contributors"]
        self.parent.helpText = (
            "Generate hybrid simulated training data and train the NeXtQSM networks (same logic as the "
            "`nextqsm-train` command line). Type the command-line arguments, e.g. "
            "<code>fit --config my.yaml --max-steps 500</code>, and press Run. "
            "Batch use: <code>Slicer --no-main-window --python-script NeXtQSMTraining.py fit --config my.yaml</code>.")
        self.parent.acknowledgementText = "NeXtQSM: Cognolato et al., Medical Image Analysis 2023."


class NeXtQSMTrainingWidget(ScriptedLoadableModuleWidget):
    """Arguments line, Run/Cancel, log. Built in code (no .ui)."""

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = NeXtQSMTrainingLogic()
        self._job = None
        form = qt.QFormLayout()
        self.argsLineEdit = qt.QLineEdit()
        self.argsLineEdit.placeholderText = "fit --config /path/config.yaml --max-steps 500"
        self.argsLineEdit.toolTip = "Arguments of `nextqsm-train` (see --help)"
        form.addRow("Arguments:", self.argsLineEdit)
        buttons = qt.QHBoxLayout()
        self.runButton = qt.QPushButton("Run")
        self.helpButton = qt.QPushButton("Show --help")
        self.cancelButton = qt.QPushButton("Cancel")
        self.cancelButton.enabled = False
        for b in (self.runButton, self.helpButton, self.cancelButton):
            buttons.addWidget(b)
        form.addRow(buttons)
        self.progressBar = qt.QProgressBar()
        self.progressBar.setRange(0, 1000)
        form.addRow(self.progressBar)
        self.logText = qt.QPlainTextEdit()
        self.logText.readOnly = True
        form.addRow(self.logText)
        self.layout.addLayout(form)
        self.layout.addStretch(1)
        self.runButton.connect("clicked(bool)", self.onRun)
        self.helpButton.connect("clicked(bool)", lambda *a: self._start(["--help"]))
        self.cancelButton.connect("clicked(bool)", self.onCancel)
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onTimer)

    def cleanup(self) -> None:
        if self._job is not None and not self._job.done:
            self._job.cancel()

    def onRun(self) -> None:
        import shlex

        self._start(shlex.split(self.argsLineEdit.text))

    def _start(self, args) -> None:
        if self._job is not None and not self._job.done:
            return
        self.logText.clear()
        self._job = self.logic.startCli(args)
        self._job.logReceived.connect(self.logText.appendPlainText)
        self._job.progressChanged.connect(lambda f, s: setattr(self.progressBar, "value", int(1000 * f)))
        self.runButton.enabled = False
        self.cancelButton.enabled = True
        self._timer.start()

    def onTimer(self) -> None:
        if self._job is not None and not self._job.poll():
            self._timer.stop()
            self.logText.appendPlainText(f"--- {self._job.state} (exit code {self._job.returncode})")
            self._job.cleanup()
            self.runButton.enabled = True
            self.cancelButton.enabled = False

    def onCancel(self) -> None:
        if self._job is not None:
            self._job.cancel()


MAKE_PAIR_SCRIPT = r"""
import json, sys
import numpy as np
from nextqsm.io import save_nifti
from nextqsm_training.simulate import make_pair
out, seed, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
opts = json.loads(sys.argv[4])
pair = make_pair(seed, size=size, **opts)
vs = np.asarray(pair.get("voxel_size", (1.0, 1.0, 1.0)), dtype=float).ravel()[:3]
aff = np.diag([*vs, 1.0])
names = []
for key, val in pair.items():
    arr = val.detach().cpu().numpy() if hasattr(val, "detach") else np.asarray(val)
    arr = np.squeeze(arr)
    if arr.ndim == 3 and arr.dtype.kind in "fiub":
        save_nifti(arr.astype(np.float32), aff, f"{out}/{key}.nii.gz")
        names.append(key)
print("PROGRESS 1.0 pair written")
json.dump(names, open(f"{out}/names.json", "w"))
"""


class NeXtQSMTrainingLogic(ScriptedLoadableModuleLogic):
    """Runs ``nextqsm_training.cli`` (the `nextqsm-train` command) in a subprocess."""

    def startCli(self, args):
        """Start ``nextqsm-train *args`` in a PythonSlicer subprocess; returns a ``nextqsm.jobs.Job`` (poll it)."""
        from nextqsm.jobs import Job

        return Job({}, args=["-m", "nextqsm_training.cli", *[str(a) for a in args]]).start()

    def cli(self, args, timeout=None) -> int:
        """Run ``nextqsm-train *args`` to completion (blocking; output goes to the log); returns the exit code."""
        job = self.startCli(args)
        job.logReceived.connect(logging.info)
        job.wait(timeout=timeout)
        if not job.done:
            job.cancel()
        job.cleanup()
        return job.returncode if job.returncode is not None else -1

    def fit(self, config, out=None, resume=False, maxSteps=None, timeout=None) -> int:
        args = ["fit", "--config", str(config)]
        if out:
            args += ["--out", str(out)]
        if resume:
            args.append("--resume")
        if maxSteps is not None:
            args += ["--max-steps", str(int(maxSteps))]
        return self.cli(args, timeout=timeout)

    def export(self, checkpoint, weightsDir=None, timeout=None) -> int:
        args = ["export", "--checkpoint", str(checkpoint)]
        if weightsDir:
            args += ["--weights-dir", str(weightsDir)]
        return self.cli(args, timeout=timeout)

    def makePairNodes(self, seed: int = 0, size: int = 64, timeout=600, **opts) -> dict:
        """Simulate one training pair (``nextqsm_training.simulate.make_pair``) and load its 3D arrays as nodes."""
        import json
        import tempfile

        from nextqsm import mrml
        from nextqsm.io import load_nifti
        from nextqsm.jobs import Job

        out = tempfile.mkdtemp(prefix="nextqsm_pair_")
        job = Job({}, work_dir=out, own_dir=True,
                  args=["-c", MAKE_PAIR_SCRIPT, out, str(int(seed)), str(int(size)), json.dumps(opts)]).start()
        try:
            if job.wait(timeout=timeout) != "succeeded":
                raise RuntimeError(f"make_pair failed: {job.error}")
            nodes = {}
            for key in json.load(open(os.path.join(out, "names.json"))):
                vol = load_nifti(os.path.join(out, f"{key}.nii.gz"))
                nodes[key] = mrml.add_volume_node(slicer.mrmlScene, vol.data, vol.affine, f"pair{seed}_{key}")
            return nodes
        finally:
            if not job.done:
                job.cancel()
            job.cleanup()


class NeXtQSMTrainingTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_CliHelp()

    def test_CliHelp(self):
        job = NeXtQSMTrainingLogic().startCli(["--help"])
        job.wait(timeout=120)
        text = "\n".join(job.log)
        job.cleanup()
        self.assertEqual(job.state, "succeeded", text)
        self.assertIn("nextqsm-train", text)
        self.delayDisplay("Test passed")


def main(argv=None) -> int:
    """Batch entry (``--python-script``): the `nextqsm-train` CLI in this process."""
    from nextqsm_training.cli import main as cli_main

    return cli_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    rc = main()
    if hasattr(slicer, "util") and hasattr(slicer.util, "exit"):
        slicer.util.exit(rc)
    sys.exit(rc)
