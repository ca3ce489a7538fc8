"""Calibrate the VN's chi level (``VariationalNetwork.level``) on generator data.

The field of a constant chi inside the brain mask is harmonic there, so background removal takes it away and
no local field carries chi's level (its mean over the mask): a VN sets it from its training prior alone, and
fine-tuning shifts it (``benchmarks/results_nextqsm.md``, sessions 13-16: -0.004 to -0.012 ppm, which costs raw
XSIM but no NRMSE). The generator's chi is CSF-referenced (CSF = 0), like the benchmark heads' truth. This module
measures the VN's level bias on ``n`` generator items, in units of each input's ``robust_scale`` (so the setting
stays scale-aware), and writes ``level`` = minus its mean into the weights folder's manifest (``arch``), with
a ``calibration`` record. The safetensors file and its checksum are unchanged.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

CALIBRATION_SEED = 104729   # disjoint from every training seed in configs/
CALIBRATION_ITEMS = 48
#: training maps for the head calibration: disjoint from the selection maps 1-4 and the held-out 13-16
HEAD_MAPS = (5, 6, 7, 8, 9, 10, 11, 12)
#: of those, the heads scored with B0 tilted by HEAD_TILT_DEG from k towards j (the others along k)
HEAD_TILTED = (9, 10, 11, 12)
HEAD_TILT_DEG = 25.0


def level_bias(vn, ds, indices) -> np.ndarray:
    """Per item: mean over the VN's output mask of (chi_hat - chi) / s (unitless; ``s`` = ``robust_scale`` of
    the VN's input field on its data mask), with ``vn.level`` taken as 0. ``ds`` yields training items."""
    from nextqsm.models.vn import robust_scale

    from .train import _collate, vn_inputs

    keep = vn.level
    vn.set_level(0.0)
    out = []
    try:
        with torch.no_grad():
            for i in indices:
                b = _collate([ds[int(i)]])
                f, mv, mo = vn_inputs(vn, b)
                chi_hat = vn(f, mv, b["voxel_size"], b["b0_dir"], out_mask=mo)
                mo = mo.to(chi_hat.dtype)
                s = robust_scale(f, mv.to(f.dtype))
                d = ((chi_hat - b["chi"] * mo) * mo).sum() / mo.sum().clamp_min(1.0)
                out.append(float(d / s.reshape(())))
    finally:
        vn.set_level(keep)
    return np.asarray(out)


def calibrate_level(config, weights_dir: str | Path, n: int = CALIBRATION_ITEMS,
                    seed: int = CALIBRATION_SEED, write: bool = True) -> dict:
    """Fit ``level`` of ``weights_dir``'s ``nextqsm-vn`` on ``n`` items of ``config``'s (a YAML path or a
    :class:`Config`) data section (training
    split, generator seed ``seed``, no augmentation) and, if ``write``, record it in the manifest. Returns the
    record: level, the per-item bias's mean / std / min / max, n, seed, config."""
    from nextqsm.models.weights import load_model

    from .config import load_config
    from .train import make_dataset

    cfg = config if hasattr(config, "data") else load_config(str(config))
    data = dataclasses.replace(cfg.data, seed=int(seed), n_train=max(int(n), 1), cache_dir=None)
    vn = load_model("nextqsm-vn", weights_dir)
    torch.set_num_threads(max(1, int(cfg.train.threads)))
    bias = level_bias(vn, make_dataset(data, "train"), range(int(n)))
    rec = {"level": -float(bias.mean()), "bias_mean": float(bias.mean()), "bias_std": float(bias.std()),
           "bias_min": float(bias.min()), "bias_max": float(bias.max()), "n": int(n), "seed": int(seed),
           "config": str(config) if not hasattr(config, "data") else "(in memory)", "unit": "robust_scale of the input field (unitless)"}
    if write:
        _record_level(weights_dir, rec)
    return rec


def _folder_with_level(src: Path, dst: Path, level: float) -> Path:
    """``dst``: the weights folder ``src`` (safetensors symlinked, checksums still verified) with the VN's
    ``arch.level`` set to ``level``."""
    from nextqsm.io import write_json_atomic
    from nextqsm.models.weights import MANIFEST, load_manifest

    dst.mkdir(parents=True, exist_ok=True)
    man = load_manifest(src)
    for f in src.glob("*.safetensors"):
        (dst / f.name).symlink_to(f.resolve())
    man["models"]["nextqsm-vn"]["arch"]["level"] = float(level)
    man["models"]["nextqsm-vn"].pop("levels", None)   # no per-path level may override it
    write_json_atomic(dst / MANIFEST, man)
    return dst


def head_level_bias(weights_dir: str | Path, maps=HEAD_MAPS, tilted=HEAD_TILTED, size: int = 160,
                    voxel_mm: float | None = 1.0, bfr: str | None = None, kind: str = "total",
                    log=None) -> list[dict]:
    """Per head: the default pipeline's (total field -> background removal -> VN) chi-level bias with
    ``level`` = 0, ``bias`` = mean over the mask of (chi_hat - chi) / s, where ``s`` (ppm) is the mean over the
    mask of chi(level 1) - chi(level 0): the VN's ``robust_scale`` times the share of the mask the VN fills (all of
    it for a ``fill_rim`` VN), so that ``level = -bias`` zeroes that head's offset exactly.
    ``maps``: SynthSeg training maps (held-out maps are refused); ``tilted``: those scored with B0 tilted
    :data:`HEAD_TILT_DEG` degrees from k towards j; ``size`` voxels per edge at ``voxel_mm`` mm (``None`` fits
    the brain into the grid); ``bfr``: background removal (default: the manifest's); ``kind``: ``'total'``, or
    ``'local'`` for the heads' true local field through the default local path (VN + refinement, which is not
    exactly linear in the level: the bias is then a first-order estimate)."""
    import tempfile

    from nextqsm.errors import QSMInputError
    from nextqsm.pipeline import QSMInput, run

    from .heads import HELD_OUT, realistic_head, tilted_b0

    if kind not in ("total", "local"):
        raise ValueError(f"kind must be 'total' or 'local', got {kind!r}")
    held = sorted(set(int(i) for i in maps) & set(HELD_OUT))
    if held:
        raise QSMInputError("maps", f"{held} are held out from training",
                            f"calibrate on training maps only, e.g. {' '.join(map(str, HEAD_MAPS))}")
    src = Path(weights_dir)
    vs = None if voxel_mm is None else (float(voxel_mm),) * 3
    out = []
    with tempfile.TemporaryDirectory(prefix="nextqsm-level-") as tmp:
        w0 = _folder_with_level(src, Path(tmp) / "l0", 0.0)
        w1 = _folder_with_level(src, Path(tmp) / "l1", 1.0)
        for i in maps:
            tilt = int(i) in set(int(j) for j in tilted)
            h = realistic_head(int(i), size=int(size), voxel_size=vs, b0_dir=tilted_b0(HEAD_TILT_DEG if tilt else 0.0))
            m = h["mask"] > 0
            inp = QSMInput(field=h[f"{kind}_field"], mask=m, kind=kind,
                           voxel_size=tuple(map(float, h["voxel_size"])), b0_dir=tuple(map(float, h["b0_dir"])))
            r0 = run("nextqsm", inp, weights_dir=w0, bfr=bfr)
            chi0 = r0.chi
            chi1 = run("nextqsm", inp, weights_dir=w1, bfr=bfr).chi
            d = (chi1 - chi0)[m].astype(np.float64)
            s = float(d.mean())
            off = float((chi0 - h["chi"])[m].astype(np.float64).mean())
            rec = {"map": int(i), "tilt_deg": HEAD_TILT_DEG if tilt else 0.0, "scale_ppm": s,
                   "filled": float((d != 0).mean()), "offset_ppm": off, "bias": off / s,
                   "path": r0.params.get("level_path")}
            out.append(rec)
            if log:
                log(f"map {rec['map']} tilt {rec['tilt_deg']:4.1f}: offset {off:+.5f} ppm, s {s:.5f} ppm, "
                    f"bias {rec['bias']:+.4f}")
    return out


def calibrate_level_on_heads(weights_dir: str | Path, maps=HEAD_MAPS, tilted=HEAD_TILTED, size: int = 160,
                             voxel_mm: float | None = 1.0, bfr: str | None = None, write: bool = True,
                             per_path: bool = False, kind: str = "total", log=None) -> dict:
    """Fit ``level`` of ``weights_dir``'s ``nextqsm-vn`` as minus the mean :func:`head_level_bias` over the
    heads and, if ``write``, record it (with the per-head biases) in the manifest: as ``arch.level`` (every
    input path), or with ``per_path`` as ``levels[path]`` for the one background-removal path the heads took
    (the pipeline's choice for their voxel size, e.g. LBV at 1 mm, V-SHARP at 2-3 mm), which overrides
    ``arch.level`` on that path only (the VN's level bias differs between paths and resolutions). Returns the
    record."""
    heads = head_level_bias(weights_dir, maps, tilted, size, voxel_mm, bfr, kind, log)
    bias = np.array([h["bias"] for h in heads])
    paths = sorted({h["path"] for h in heads})
    if per_path and len(paths) != 1:
        raise ValueError(f"the heads took several input paths {paths}: calibrate one path per call")
    rec = {"level": -float(bias.mean()), "bias_mean": float(bias.mean()), "bias_std": float(bias.std()),
           "bias_min": float(bias.min()), "bias_max": float(bias.max()), "n": len(heads), "source": "heads",
           "maps": [int(i) for i in maps], "tilted": [int(i) for i in tilted], "tilt_deg": HEAD_TILT_DEG,
           "size": int(size), "voxel_mm": voxel_mm, "bfr": bfr or "manifest default", "path": paths[0] if len(paths) == 1 else paths,
           "per_path": bool(per_path), "kind": kind, "heads": heads,
           "unit": "robust_scale of the input field (unitless)"}
    if write:
        _record_level(weights_dir, rec, paths[0] if per_path else None)
    return rec


def _record_level(weights_dir: str | Path, rec: dict, path: str | None = None) -> None:
    """Write ``rec['level']`` into the manifest's ``nextqsm-vn`` entry: as ``arch.level`` with ``calibration`` =
    ``rec``, or for one input ``path`` as ``levels[path]`` with ``level_calibrations[path]`` = ``rec``."""
    from nextqsm.io import write_json_atomic
    from nextqsm.models.weights import MANIFEST, load_manifest

    d = Path(weights_dir)
    man = load_manifest(d)
    entry = man["models"]["nextqsm-vn"]
    if path is None:
        entry["arch"]["level"] = rec["level"]
        entry["calibration"] = rec
    else:
        entry.setdefault("levels", {})[path] = rec["level"]
        entry.setdefault("level_calibrations", {})[path] = rec
    write_json_atomic(d / MANIFEST, man)
