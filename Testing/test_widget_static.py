"""Static checks of the Slicer modules, without Slicer.

* ``NeXtQSM.py`` / ``NeXtQSMTraining.py`` compile; only they import qt/ctk/ScriptedLoadableModule;
  the GUI-side library modules never import torch.
* ``NeXtQSM.ui`` loads with PySide6's ``QUiLoader`` under ``QT_QPA_PLATFORM=offscreen``.
  QUiLoader does not know Slicer/CTK classes (qMRMLNodeComboBox, ctkCollapsibleButton, ...),
  so :func:`load_ui_offscreen` loads a copy in which every class declared in ``<customwidgets>``
  is replaced by the Qt class it ``<extends>`` (QWidget), and the ``<connections>`` to
  Slicer-only slots (setMRMLScene) are dropped. Object names, layouts and dynamic properties
  (``SlicerParameterName``) are kept, which is what the checks below need.
* every ``self.ui.X`` in ``NeXtQSM.py`` exists in the .ui (and the check is shown to fail when a
  widget is removed from a copy); every ``SlicerParameterName`` is a field of the parameter node
  wrapper, every field has a widget, and combo box items equal the ``Choice`` values.
* every file of the modules is listed in their CMakeLists.txt (``scripts/update_cmake_lists.py --check``).
"""
from __future__ import annotations

import ast
import json
import os
import py_compile
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_PY = REPO / "NeXtQSM" / "NeXtQSM.py"
TRAINING_PY = REPO / "NeXtQSMTraining" / "NeXtQSMTraining.py"
UI = REPO / "NeXtQSM" / "Resources" / "UI" / "NeXtQSM.ui"
GUI_FILES = (MODULE_PY, TRAINING_PY)


# --------------------------------------------------------------------------- helpers

def ui_copy_with_qt_classes(ui_text: str) -> str:
    """The .ui with custom (Slicer/CTK) widget classes mapped to the Qt class they extend; no connections."""
    root = ET.fromstring(ui_text)
    extends = {}
    cw = root.find("customwidgets")
    if cw is not None:
        for c in cw.findall("customwidget"):
            extends[c.findtext("class")] = c.findtext("extends") or "QWidget"
        root.remove(cw)
    conns = root.find("connections")
    if conns is not None:
        root.remove(conns)
    for w in root.iter("widget"):
        if w.get("class") in extends:
            w.set("class", extends[w.get("class")])
    return ET.tostring(root, encoding="unicode")


def load_ui_offscreen(ui_text: str):
    """Load .ui text with QUiLoader (offscreen); returns the top widget (keeps a QApplication alive)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    QtCore = pytest.importorskip("PySide6.QtCore")
    QtWidgets = pytest.importorskip("PySide6.QtWidgets")
    QtUiTools = pytest.importorskip("PySide6.QtUiTools")
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    buf = QtCore.QBuffer()
    buf.setData(QtCore.QByteArray(ui_copy_with_qt_classes(ui_text).encode()))
    buf.open(QtCore.QIODevice.ReadOnly)
    loader = QtUiTools.QUiLoader()
    widget = loader.load(buf)
    assert widget is not None, loader.errorString()
    widget._app = app
    return widget


def ui_object_names(widget) -> set[str]:
    from PySide6.QtCore import QObject

    return {o.objectName() for o in widget.findChildren(QObject) if o.objectName()} | {widget.objectName()}


def ui_names_used_in_code(code: str) -> set[str]:
    return set(re.findall(r"self\.ui\.([A-Za-z_]\w*)", code))


def missing_ui_names(code: str, ui_text: str) -> set[str]:
    """Names used as ``self.ui.X`` in the code that no object in the (loaded) .ui has."""
    return ui_names_used_in_code(code) - ui_object_names(load_ui_offscreen(ui_text))


def parameter_fields(code: str) -> dict[str, ast.AST]:
    """Fields (name -> annotation) of the class decorated with @parameterNodeWrapper."""
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(
                (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper") for d in node.decorator_list):
            return {s.target.id: s.annotation for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class found")


def choice_values(annotation: ast.AST) -> list | None:
    for n in ast.walk(annotation):
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Choice":
            return ast.literal_eval(n.args[0])
    return None


def slicer_parameter_names(ui_text: str) -> dict[str, ET.Element]:
    out = {}
    for w in ET.fromstring(ui_text).iter("widget"):
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                out[p.findtext("string")] = w
    return out


def _imports(path: Path) -> set[str]:
    mods = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            mods |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            mods.add(n.module)
    return mods


# --------------------------------------------------------------------------- tests

@pytest.mark.parametrize("path", GUI_FILES, ids=lambda p: p.name)
def test_module_files_compile(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "x.pyc"), doraise=True)


def test_only_module_files_import_qt_and_torch_stays_out_of_the_gui():
    gui_only = {"qt", "ctk", "slicer.ScriptedLoadableModule", "PythonQt"}
    for folder in (REPO / "NeXtQSM", REPO / "NeXtQSMTraining"):
        for p in folder.rglob("*.py"):
            if p in GUI_FILES or "__pycache__" in p.parts:
                continue
            bad = _imports(p) & gui_only
            assert not bad, f"{p.relative_to(REPO)} imports {bad}: only the module files may"
    for p in (MODULE_PY, TRAINING_PY):
        assert "torch" not in _imports(p), f"{p.name} must not import torch (the worker does)"
    code = ("import sys; import nextqsm.slicer_logic, nextqsm.mrml, nextqsm.jobs, nextqsm.roi, nextqsm.sampledata; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "importing the GUI-side library pulled in torch"


def test_ui_loads_with_quiloader_offscreen():
    w = load_ui_offscreen(UI.read_text())
    names = ui_object_names(w)
    assert {"phaseSelector", "applyButton", "cancelButton", "progressBar", "compareButton"} <= names
    from PySide6.QtWidgets import QComboBox, QPushButton

    assert isinstance(w.findChild(QPushButton, "applyButton"), QPushButton)
    assert w.findChild(QComboBox, "phaseUnitsComboBox").count() == 4
    # dynamic properties survive the class mapping
    assert w.findChild(QComboBox, "deviceComboBox").property("SlicerParameterName") == "device"


def test_every_ui_name_used_in_the_code_exists():
    code = MODULE_PY.read_text()
    used = ui_names_used_in_code(code)
    assert len(used) >= 10
    assert missing_ui_names(code, UI.read_text()) == set()


def test_ui_check_fails_when_a_widget_is_removed():
    text = UI.read_text()
    root = ET.fromstring(text)
    for parent in root.iter():
        for item in list(parent):
            w = item.find("widget")
            if item.tag == "item" and w is not None and w.get("name") == "cancelButton":
                parent.remove(item)
    broken = ET.tostring(root, encoding="unicode")
    assert 'name="cancelButton"' not in broken
    assert missing_ui_names(MODULE_PY.read_text(), broken) == {"cancelButton"}


def test_parameter_names_match_the_parameter_node():
    fields = parameter_fields(MODULE_PY.read_text())
    bound = slicer_parameter_names(UI.read_text())
    assert set(bound) - set(fields) == set(), "SlicerParameterName without a parameter node field"
    assert set(fields) - set(bound) == set(), "parameter node fields without a widget"
    for name, widget in bound.items():
        choices = choice_values(fields[name])
        if choices is not None:
            assert widget.get("class") == "QComboBox"
            items = [i.findtext("property/string") for i in widget.findall("item")]
            assert items == choices, f"{name}: combo box items {items} != Choice {choices}"
    # the method check boxes are the ones the widget reads
    ns: dict = {}
    m = re.search(r"METHOD_PARAMETERS = \{.*?\n\}", MODULE_PY.read_text(), re.S)
    exec(m.group(0), ns)  # a plain dict literal
    assert set(ns["METHOD_PARAMETERS"].values()) <= set(fields)
    from nextqsm.pipeline import METHODS

    assert set(ns["METHOD_PARAMETERS"]) <= set(METHODS)


def _load_update_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("update_cmake_lists", REPO / "scripts" / "update_cmake_lists.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("module", ["NeXtQSM", "NeXtQSMTraining"])
def test_every_file_is_listed_in_the_cmake_lists(module):
    upd = _load_update_script()
    d = REPO / module
    text = (d / "CMakeLists.txt").read_text()
    scripts = upd.listed_files(text, "SCRIPTS", module)
    resources = upd.listed_files(text, "RESOURCES", module)
    assert f"{module}.py" in scripts
    for f in scripts + resources:
        assert (d / f).is_file(), f"{module}/CMakeLists.txt lists {f}, which does not exist"
    # glob the folder: files added later by anyone are caught
    pkg = {"NeXtQSM": "nextqsm", "NeXtQSMTraining": "nextqsm_training"}[module]
    for p in sorted((d / pkg).rglob("*.py")):
        if "__pycache__" in p.parts:
            continue
        rel = p.relative_to(d).as_posix()
        assert rel in scripts, f"{rel} is not in {module}/CMakeLists.txt: run python scripts/update_cmake_lists.py"
    for p in sorted((d / "Resources").rglob("*")):
        if p.is_file():
            rel = p.relative_to(d).as_posix()
            assert rel in resources, f"{rel} is not in {module}/CMakeLists.txt: run python scripts/update_cmake_lists.py"
    assert "slicerMacroBuildScriptedModule" in text and "NAME ${MODULE_NAME}" in text


def test_update_script_check_passes():
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "update_cmake_lists.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_extension_metadata():
    text = (REPO / "CMakeLists.txt").read_text()
    for key in ("cmake_minimum_required", "project(NeXtQSM)", "EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY \"Quantification\"",
                "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS",
                "EXTENSION_DEPENDS \"PyTorch\"", "find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                "add_subdirectory(NeXtQSM)", "add_subdirectory(NeXtQSMTraining)",
                "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert key in text, f"top-level CMakeLists.txt lacks {key}"
    entry = json.loads((REPO / "NeXtQSM.json").read_text())
    assert entry["category"] == "Quantification" and entry["build_dependencies"] == ["PyTorch"]
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/")
    from PIL import Image

    for icon in (REPO / "Resources" / "NeXtQSM.png", REPO / "NeXtQSM" / "Resources" / "Icons" / "NeXtQSM.png",
                 REPO / "NeXtQSMTraining" / "Resources" / "Icons" / "NeXtQSMTraining.png"):
        assert Image.open(icon).size == (128, 128)
