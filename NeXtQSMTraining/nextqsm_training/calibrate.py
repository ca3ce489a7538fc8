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
    from nextqsm.io import write_json_atomic
    from nextqsm.models.weights import MANIFEST, load_manifest, load_model

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
        d = Path(weights_dir)
        man = load_manifest(d)
        entry = man["models"]["nextqsm-vn"]
        entry["arch"]["level"] = rec["level"]
        entry["calibration"] = rec
        write_json_atomic(d / MANIFEST, man)
    return rec
