"""Trained weights: safetensors files plus a JSON manifest with sha256, architecture and provenance.

Layout (``nextqsm/models/weights/``)::

    manifest.json        {"format": 1, "models": {name: entry, ...}}
    <name>.safetensors   one state dict per model

Each manifest entry: ``file``, ``sha256``, ``class`` (``VariationalNetwork`` | ``ScaledUNet``),
``arch`` (constructor kwargs), ``training`` (config, data, steps), ``metrics`` (validation),
``created``. Model names used by the pipelines: ``nextqsm-bfr``, ``nextqsm-vn`` (NeXtQSM) and
``baseline-bfr``, ``baseline-inv`` (model-agnostic U-Net baseline).

Loading is offline and verifies the checksum before anything is deserialised.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..errors import QSMInputError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST = "manifest.json"


class WeightsChecksumError(RuntimeError):
    """A weights file does not match the sha256 recorded in its manifest."""


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(weights_dir: str | os.PathLike | None = None) -> dict:
    """The manifest of ``weights_dir`` (default: the shipped weights); empty if there is none."""
    p = Path(weights_dir or WEIGHTS_DIR) / MANIFEST
    if not p.exists():
        return {"format": 1, "models": {}}
    return json.loads(p.read_text())


def build_model(cls_name: str, arch: dict):
    """Instantiate a network class of :mod:`nextqsm.models.vn` from its manifest ``class`` and ``arch``."""
    from . import vn

    classes = {"VariationalNetwork": vn.VariationalNetwork, "ScaledUNet": vn.ScaledUNet}
    if cls_name not in classes:
        raise RuntimeError(f"unknown model class {cls_name!r} in the weights manifest (known: {sorted(classes)})")
    return classes[cls_name](**arch)


def model_class_and_arch(model) -> tuple[str, dict]:
    """(class name, constructor kwargs) of a network from :mod:`nextqsm.models.vn`."""
    return type(model).__name__, dict(model.config)


def save_model(model, name: str, weights_dir: str | os.PathLike | None = None, training: dict | None = None,
               metrics: dict | None = None) -> dict:
    """Write ``<name>.safetensors`` (atomically) and its manifest entry; returns the entry."""
    from safetensors.torch import save_file

    from ..io import atomic_path, write_json_atomic

    d = Path(weights_dir or WEIGHTS_DIR)
    path = d / f"{name}.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"name": name})
    cls_name, arch = model_class_and_arch(model)
    entry = {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size, "class": cls_name,
             "arch": arch, "parameters": int(sum(v.numel() for v in state.values())),
             "training": training or {}, "metrics": metrics or {},
             "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    man = load_manifest(d)
    man.setdefault("models", {})[name] = entry
    write_json_atomic(d / MANIFEST, man)
    return entry


def alias_model(name: str, target: str, weights_dir: str | os.PathLike | None = None) -> dict:
    """Make model ``name`` use ``target``'s file (identical tensors: one file in the repository instead
    of two); ``name`` keeps its own training record and metrics. Returns its new entry."""
    from ..io import write_json_atomic

    d = Path(weights_dir or WEIGHTS_DIR)
    man = load_manifest(d)
    models = man.get("models", {})
    if target not in models:
        raise QSMInputError("weights", f"model {target!r} is not in {d / MANIFEST}", "export it first")
    own = models.get(name, {})
    entry = {**own, **{k: models[target][k] for k in ("file", "sha256", "bytes", "class", "arch", "parameters")},
             "alias_of": target}
    if own.get("file") and own["file"] != entry["file"] and (d / own["file"]).exists():
        (d / own["file"]).unlink()
    models[name] = entry
    write_json_atomic(d / MANIFEST, man)
    return entry


def load_model(name: str, weights_dir: str | os.PathLike | None = None, device: str = "cpu", verify: bool = True):
    """Load model ``name`` from the manifest (offline), verify its sha256, return it in eval mode.

    Raises :class:`QSMInputError` when the model is not in the manifest or its file is missing,
    and :class:`WeightsChecksumError` (a RuntimeError) when the file's sha256 differs.
    """
    from safetensors.torch import load_file

    d = Path(weights_dir or WEIGHTS_DIR)
    man = load_manifest(d)
    entry = man.get("models", {}).get(name)
    if entry is None:
        raise QSMInputError("weights", f"model {name!r} is not in {d / MANIFEST}",
                            "install the shipped weights, or export trained ones with `nextqsm-train export`")
    path = d / entry["file"]
    if not path.exists():
        raise QSMInputError("weights", f"file {path} of model {name!r} is missing",
                            "reinstall the extension or export the weights again with `nextqsm-train export`")
    if verify:
        got = sha256_file(path)
        if got != entry["sha256"]:
            raise WeightsChecksumError(
                f"weights file {path} is corrupted or was changed: sha256 {got} does not match the manifest "
                f"({entry['sha256']}). Fix: reinstall the extension (or re-export the weights with "
                f"`nextqsm-train export`) so that file and manifest agree.")
    model = build_model(entry["class"], entry["arch"])
    state = load_file(str(path), device="cpu")
    model.load_state_dict(state)
    return model.to(device).eval()


def set_defaults(weights_dir: str | os.PathLike | None = None, **defaults) -> dict:
    """Record inference defaults in the manifest (e.g. ``bfr='vsharp'`` while the shipped background
    U-Net is not yet good enough); ``run_nextqsm`` reads them when the caller does not choose."""
    from ..io import write_json_atomic

    d = Path(weights_dir or WEIGHTS_DIR)
    man = load_manifest(d)
    man.setdefault("defaults", {}).update(defaults)
    write_json_atomic(d / MANIFEST, man)
    return man["defaults"]


def describe(weights_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Short summary per model (file, sha256, steps, metrics) for reports and the CLI."""
    return {n: {k: e.get(k) for k in ("file", "sha256", "parameters", "metrics")} | {"steps": e.get("training", {}).get("steps")}
            for n, e in load_manifest(weights_dir).get("models", {}).items()}
