"""Training configuration: dataclasses loaded from / saved to YAML.

The same file format runs a 2-core CPU chunk (``configs/cpu_small.yaml``) and a GPU run
(``configs/gpu_full.yaml``); only sizes change. Unknown keys are an error (typos do not
silently fall back to defaults).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nextqsm.errors import QSMInputError


def _unet(base: int = 8, depth: int = 3, convs: int = 2, norm: str = "none") -> dict:
    return {"base": base, "depth": depth, "convs": convs, "norm": norm}


@dataclass
class ModelConfig:
    """Architectures. ``bfr``/``baseline_inv``: UNet3D kwargs; ``vn``: VariationalNetwork kwargs."""

    bfr: dict = field(default_factory=lambda: _unet(8, 3, 1))
    vn: dict = field(default_factory=lambda: {"steps": 6, "unet": _unet(8, 3, 1), "lambda_init": 0.1, "pad": None})
    baseline_inv: dict = field(default_factory=lambda: _unet(8, 3, 1))


@dataclass
class DataConfig:
    """Training data. ``source``: 'hybrid' (``nextqsm_training.dataset.HybridDataset``), 'make_pair'
    (``nextqsm_training.simulate.make_pair`` directly; ``kwargs['cycle']`` = list of option dicts
    cycled over items, e.g. voxel sizes) or 'toy' (ellipsoid phantoms made with
    ``nextqsm.dipole.forward_field``, for tests).

    ``n_train`` distinct training volumes (the step index walks through them deterministically,
    with exact flip/permutation augmentation); ``n_val`` held-out volumes from ``val_seed``.
    ``kwargs`` go to the dataset constructor. ``cache_dir``: where generated volumes are kept
    (``None`` = in memory only). ``vn_input``: what the VN is trained on in phase 1: ``'local'``
    (the true local field, the paper's choice) or ``'vsharp'`` (V-SHARP of the total field on its
    eroded mask: what the VN receives in the ``bfr=vsharp`` pipeline, errors of the background
    removal included); ``vsharp_frac`` < 1 gives V-SHARP inputs to that fraction of the items only
    (the others keep the true local field; see ``train.uses_vsharp``). ``lbv_frac``: the share of those
    background-removal items that get LBV (the pipeline's ``bfr_fine`` at <= ``lbv_max_voxel_mm``) instead of
    V-SHARP, among items whose largest voxel edge is at most ``lbv_max_voxel_mm`` (``train.uses_lbv``).
    """

    source: str = "hybrid"
    size: int = 64
    n_train: int = 256
    n_val: int = 4
    seed: int = 0
    val_seed: int = 1_000_003
    augment: bool = True
    kwargs: dict = field(default_factory=dict)
    val_kwargs: dict = field(default_factory=dict)
    cache_dir: str | None = None
    vn_input: str = "local"
    vsharp_frac: float = 1.0
    lbv_frac: float = 0.0
    lbv_max_voxel_mm: float = 1.25


@dataclass
class TrainConfig:
    """Optimisation. Steps are global optimiser steps; phase 1 = steps [0, phase1_steps)."""

    phase1_steps: int = 1000
    phase2_steps: int = 1000
    batch_size: int = 1
    lr: float = 4e-4
    lambda_lr_mult: float = 1.0  # learning-rate factor for the VN step sizes (softplus^-1 lambda)
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.0
    schedule: str = "cosine"  # 'cosine' (linear warm-up then cosine to min_lr_frac) | 'constant'
    warmup_steps: int = 50
    min_lr_frac: float = 0.05
    grad_clip: float = 1.0
    amp: bool = True  # bf16 autocast on CUDA (ignored on the CPU)
    amp_cpu: bool = False  # bf16 autocast on a CPU with native bf16 (AVX512-BF16 / AMX; 1.8x faster steps); else fp32
    checkpointing: bool = False
    ckpt_every: int = 50
    snapshot_every: int = 0     # > 0: also keep the model weights every N steps (OUT/snapshots/, for averaging)
    val_every: int = 200
    log_every: int = 10
    threads: int = 2
    seed: int = 0
    train_baseline: bool = True
    demean_loss: bool = True
    xsim_weight: float = 0.0    # > 0: add xsim_weight * (1 - XSIM) (differentiable, train.xsim_loss) to the chi loss
    mean_weight: float = 0.0    # > 0: add mean_weight * |mean(chi_hat - chi)| over the mask (ppm, train.mean_offset):
    #   the demeaned L1 leaves chi's global level free and a pointwise L1 (a conditional median) biases it on noisy input
    regional_weight: float = 0.0  # > 0: add regional_weight * train.regional_bias (mean |box mean of the demeaned
    regional_size: int = 7        #   error|, box regional_size^3 voxels): region-scale bias such as shrunken nuclei contrast
    focal_weight: float = 0.0     # > 0: add focal_weight * train.focal_error (|error| around small strong sources: voxels
    focal_threshold: float = 0.3  #   > focal_threshold ppm from their 5^3 box mean, dilated by 1; microbleeds, calcifications)
    device: str = "auto"
    train_bfr: bool = True      # False: the background U-Net stays as initialised (VN-only fine-tuning)
    init_from: str | None = None  # checkpoint whose model weights start a fresh run (ignored on --resume)
    workers: int = 0            # DataLoader worker processes generating batches ahead (0 = in the loop)
    echo: int = 1               # > 1: data echoing, each generated batch feeds `echo` consecutive steps, re-augmented
    #   (train.echoed): for runs bound by data generation (GPU: the networks wait for the CPU generator)
    max_minutes: float | None = None  # wall-clock limit: validate, checkpoint and stop (resume goes on)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out_dir: str = "/work/runs/nextqsm"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["train"]["betas"] = list(d["train"]["betas"])
        return d


def _build(cls, d: dict | None, where: str):
    d = dict(d or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise QSMInputError(where, f"unknown keys {unknown}", f"use only {sorted(names)}")
    obj = cls(**d)
    if isinstance(obj, TrainConfig):
        obj.betas = tuple(float(b) for b in obj.betas)
    return obj


def from_dict(d: dict[str, Any]) -> Config:
    d = dict(d or {})
    unknown = sorted(set(d) - {"model", "data", "train", "out_dir"})
    if unknown:
        raise QSMInputError("config", f"unknown sections {unknown}", "use model, data, train and out_dir")
    return Config(model=_build(ModelConfig, d.get("model"), "config.model"),
                  data=_build(DataConfig, d.get("data"), "config.data"),
                  train=_build(TrainConfig, d.get("train"), "config.train"),
                  out_dir=str(d.get("out_dir", Config.out_dir)))


def load_config(path: str | Path) -> Config:
    p = Path(path)
    if not p.exists():
        raise QSMInputError("--config", f"file {p} does not exist", "pass a YAML file such as configs/cpu_small.yaml")
    return from_dict(yaml.safe_load(p.read_text()) or {})


def save_config(cfg: Config, path: str | Path) -> None:
    from nextqsm.io import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
