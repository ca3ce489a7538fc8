"""One pipeline function per named method; same input record in, same result record out.

The CLI, the Slicer logic, the benchmarks and the tests all call :func:`run`.
Methods live in ``nextqsm.methods.*`` and are registered in :data:`METHODS` by dotted path,
so importing this module never imports torch.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from .errors import QSMInputError

ProgressFn = Callable[[float, str], None]


@dataclass
class QSMInput:
    """Input record of every pipeline.

    field: 3D float32 field in ppm, total (``kind='total'``) or local (``kind='local'``).
    mask: 3D bool brain mask. voxel_size: mm (i, j, k). b0_dir: unit vector, voxel axes.
    magnitude: optional 3D float32 (weights). device: 'auto' | 'cpu' | 'cuda'.
    b0_t / te_s: only used where a method needs them (e.g. to report or weight in rad).
    """

    field: np.ndarray
    mask: np.ndarray
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    b0_dir: tuple[float, float, float] = (0.0, 0.0, 1.0)
    kind: str = "total"
    magnitude: Optional[np.ndarray] = None
    device: str = "auto"
    b0_t: float = 3.0
    te_s: Optional[float] = None

    def __post_init__(self):
        if self.kind not in ("total", "local"):
            raise QSMInputError("input kind", f"unknown kind {self.kind!r}", "use 'total' or 'local'")
        self.field = np.asarray(self.field, dtype=np.float32)
        self.mask = np.asarray(self.mask) > 0
        if self.field.shape != self.mask.shape:
            raise QSMInputError("mask", f"shape {self.mask.shape} does not match field shape {self.field.shape}",
                                "resample the mask onto the field grid")


@dataclass
class QSMResult:
    """Output record: chi [ppm] (3D float32, zero outside mask), local field [ppm] when computed (None from
    :func:`run` for a local-field input, which is the local field)."""

    chi: np.ndarray
    method: str
    mask: np.ndarray
    local_field: Optional[np.ndarray] = None
    timings: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodInfo:
    name: str
    target: str  # "module:function"
    description: str
    needs_torch: bool = False


METHODS: dict[str, MethodInfo] = {m.name: m for m in [
    MethodInfo("nextqsm", "nextqsm.models.inference:run_nextqsm",
               "NeXtQSM: background removal (U-Net; V-SHARP while the shipped manifest says so) + variational-network inversion", True),
    MethodInfo("tgv", "nextqsm.methods.tgv:run_tgv",
               "TGV-QSM single-step (Langkammer 2015): background removal and inversion in one optimisation", True),
    MethodInfo("vsharp-ilsqr", "nextqsm.methods.pipelines:run_vsharp_ilsqr",
               "V-SHARP + iLSQR-style inversion (the STI Suite reference)"),
    MethodInfo("vsharp-tv", "nextqsm.methods.pipelines:run_vsharp_tv", "V-SHARP + TV (ADMM)"),
    MethodInfo("pdf-tv", "nextqsm.methods.pipelines:run_pdf_tv", "PDF + TV (ADMM)"),
    MethodInfo("lbv-tv", "nextqsm.methods.pipelines:run_lbv_tv", "LBV (Laplacian boundary value) + TV (ADMM)"),
    MethodInfo("vsharp-l2", "nextqsm.methods.pipelines:run_vsharp_l2", "V-SHARP + closed-form L2 (gradient regularised)"),
    MethodInfo("tkd", "nextqsm.methods.pipelines:run_tkd", "V-SHARP (for total fields) + TKD, threshold 0.19"),
    MethodInfo("unet-baseline", "nextqsm.models.inference:run_unet_baseline",
               "Model-agnostic baseline: plain U-Nets for background removal and inversion", True),
]}


def available_methods() -> list[str]:
    """Registered method names whose implementation can be imported."""
    out = []
    for name, info in METHODS.items():
        mod, _, fn = info.target.partition(":")
        try:
            if hasattr(importlib.import_module(mod), fn):
                out.append(name)
        except ImportError:
            continue
    return out


def resolve(name: str) -> Callable[..., QSMResult]:
    if name not in METHODS:
        raise QSMInputError("--method", f"unknown method {name!r}", f"choose one of {', '.join(METHODS)}")
    mod, _, fn = METHODS[name].target.partition(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as exc:
        raise QSMInputError("--method", f"method {name!r} is not available in this installation ({exc})",
                            f"choose one of {', '.join(available_methods())}") from exc


def _check_reference(reference, shape: tuple[int, ...], mask=None) -> None:
    if reference is None or isinstance(reference, str):
        if reference not in (None, "none", "mean"):
            raise QSMInputError("reference", f"unknown reference {reference!r}",
                                "use 'none', 'mean' (whole-brain mean) or an ROI mask on chi's grid")
        return
    if np.shape(reference) != tuple(shape):
        raise QSMInputError("reference ROI", f"shape {np.shape(reference)} differs from the field's {tuple(shape)}",
                            "pass an ROI mask on the field's grid")
    if not ((np.asarray(reference) > 0) & (np.ones(shape, bool) if mask is None else np.asarray(mask) > 0)).any():
        raise QSMInputError("reference ROI", "has no voxel inside the mask",
                            "pass an ROI that overlaps the brain mask, or reference='mean'")


def apply_reference(res: QSMResult, reference) -> None:
    """Reference ``res.chi`` [ppm] in place: QSM gives susceptibility up to a constant, which this fixes.

    ``reference``: None / 'none' (unchanged); 'mean' (zero mean over ``res.mask``: whole-brain referencing); or a
    boolean ROI array on chi's grid (zero mean over the ROI inside ``res.mask``, e.g. a CSF mask). The constant
    subtracted is ``res.params['reference_offset_ppm']``.
    """
    if reference is None or (isinstance(reference, str) and reference == "none"):
        return
    _check_reference(reference, res.chi.shape, res.mask)
    if isinstance(reference, str):
        roi, label = np.asarray(res.mask) > 0, "mean"
    else:
        roi, label = (np.asarray(reference) > 0) & (np.asarray(res.mask) > 0), "roi"
    offset = float(res.chi[roi].mean(dtype=np.float64))
    res.chi = np.where(res.mask, res.chi - offset, 0).astype(np.float32)
    res.params["reference"] = label
    res.params["reference_offset_ppm"] = offset


def run(name: str, inp: QSMInput, progress: ProgressFn | None = None, **params) -> QSMResult:
    """Run the named method on ``inp``; fills timings['total'] and masks chi.

    ``device`` ('auto' | 'cpu' | 'cuda') is accepted for every method: the networks take it as a
    parameter, the classical methods read it from the input (``inp.device``). ``reference`` (every method;
    default None: chi as the method returns it) references chi, see :func:`apply_reference`."""
    reference = params.pop("reference", None)
    _check_reference(reference, np.shape(inp.field), inp.mask)   # before a possibly long run
    fn = resolve(name)
    if "device" in params and "device" not in inspect.signature(fn).parameters:
        inp = dataclasses.replace(inp, device=params.pop("device"))
    t0 = time.perf_counter()
    res = fn(inp, progress=progress, **params)
    res.timings.setdefault("total", time.perf_counter() - t0)
    res.chi = np.where(res.mask, res.chi, 0).astype(np.float32)
    if inp.kind == "local":
        res.local_field = None      # the input itself: no copy written next to chi, no duplicate node in Slicer
    elif res.local_field is not None:
        res.local_field = np.where(res.mask, res.local_field, 0).astype(np.float32)
    res.method = name
    apply_reference(res, reference)
    return res


def run_record(res: QSMResult) -> dict[str, Any]:
    """JSON-able record of how ``res`` was produced (the common part of the output sidecars): method, its
    parameters as run, device, timings (s), units, software version."""
    import nextqsm

    return {"Method": res.method, "MethodParameters": res.params, "Device": res.device,
            "Timings_s": {k: round(float(v), 3) for k, v in res.timings.items()}, "Units": "ppm",
            "Software": {"Name": "nextqsm", "Version": getattr(nextqsm, "__version__", "unknown")}}


def report(progress: ProgressFn | None, frac: float, stage: str) -> None:
    """Call ``progress`` if given (fractions in [0, 1])."""
    if progress is not None:
        progress(float(min(max(frac, 0.0), 1.0)), stage)
