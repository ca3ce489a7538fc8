"""Training loop for NeXtQSM (background U-Net + VN) and the model-agnostic U-Net baseline.

Phase 1 (steps ``[0, phase1_steps)``) trains the parts separately on ground truth:
``L1(BFR(total), LF) + L1(VN(LF), chi) + L1(Base(LF), chi)``.
Phase 2 trains NeXtQSM end to end (Algorithm 1 of the paper): ``L1(VN(BFR(total)), chi) +
L1(BFR(total), LF)``; the baseline inversion U-Net keeps training on ``LF -> chi`` and the
baseline's background U-Net is the phase-1 BFR (frozen copy taken at the phase switch).
All L1 losses are mean absolute errors in ppm inside the mask (demeaned when
``train.demean_loss``: the dipole field does not determine the mean of chi).
Optional terms on chi: ``train.xsim_weight`` x (1 - XSIM), ``train.mean_weight`` x |mean(chi_hat - chi)|
(the global level, which the demeaned L1 leaves free), ``train.focal_weight`` x :func:`focal_error` (small strong
sources and their halo) and ``train.regional_weight`` x the region-scale bias
(:func:`regional_bias`: mean |local box mean of the demeaned error|, against the contrast shrinkage of deep grey
nuclei that benchmarks/results_challenge_roi_s19.md measured on real data).

Optimiser: Adam (lr 4e-4, betas 0.9/0.999) with linear warm-up and cosine decay over the
configured total steps; the VN step sizes (``vn.rho``, lambda = softplus(rho)) use
``lr * lambda_lr_mult`` (as do their noise gains ``vn.lam_gain``) so that they can move from their 0.1 start within a short run. bf16 autocast on CUDA (FFTs stay float32), and with
``train.amp_cpu`` on CPUs with native bf16 (same numerics; VN fine-tuning 2.35 -> 1.29 s/step, benchmarks/results_train_echo.md). Optional gradient
checkpointing. DDP via ``torchrun`` (gloo on CPU, nccl on CUDA).

Exact resume: the sample of global step ``t``, rank ``r``, batch slot ``b`` is item
``((t * world + r) * batch + b) % n_train`` with augmentation seeded by the same numbers, so the
data position is the step; checkpoints (``out_dir/last.pt``, written atomically every
``ckpt_every`` steps) also hold the optimiser, scheduler and all RNG states.
Logs: ``train.csv``, ``val.csv`` and TensorBoard in ``out_dir/tb``; tqdm progress on rank 0.
``train.workers > 0`` generates the batches ahead in worker processes (same items, same order);
``train.echo = E > 1`` (data echoing): step ``t`` uses the batch of data step ``t // E``, each sample
re-augmented with seed ``(seed, ECHO_SALT, t, slot)`` unless ``t % E == 0`` (still exact physics, exact resume);
``train.max_minutes`` stops a chunk on wall time (validated and checkpointed; ``--resume`` goes on).
"""
from __future__ import annotations

import copy
import csv
import math
import os
import random
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from nextqsm.dipole import forward_field
from nextqsm.io import atomic_path
from nextqsm.models.vn import ScaledUNet, VariationalNetwork

from .config import Config, save_config

KEYS = ("chi", "local_field", "total_field", "mask")
VN_KEYS = ("vn_field", "vn_mask")
"""Optional: the VN's phase-1 input and mask when ``data.vn_input != 'local'``."""


def _vol_keys(item: dict) -> tuple[str, ...]:
    return KEYS + tuple(k for k in VN_KEYS if k in item)


# ------------------------------------------------------------------------------------------ data
class ToyDataset:
    """Small ellipsoid heads made with ``nextqsm.dipole.forward_field`` (tests, smoke runs).

    Item ``i`` is deterministic from ``(seed, i)``: dict of float32 tensors (1, S, S, S) ``chi``,
    ``local_field``, ``total_field`` (ppm), ``mask`` {0, 1}, and ``voxel_size``, ``b0_dir`` (3,).
    """

    def __init__(self, n: int, size: int, seed: int = 0, voxel_size=(1.5, 1.5, 1.5), b0_dir=(0.0, 0.0, 1.0)):
        self.n, self.size, self.seed = n, size, seed
        self.voxel_size, self.b0_dir = tuple(voxel_size), tuple(b0_dir)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, i])
        s = self.size
        c = np.stack(np.meshgrid(*[np.linspace(-1, 1, s)] * 3, indexing="ij"))
        r = np.sqrt((c ** 2).sum(0))
        mask = r < 0.62
        chi = np.zeros((s, s, s), np.float32)
        for _ in range(rng.integers(4, 9)):
            cen = rng.uniform(-0.4, 0.4, 3)
            rad = rng.uniform(0.06, 0.25, 3)
            e = (((c - cen[:, None, None, None]) / rad[:, None, None, None]) ** 2).sum(0) < 1
            chi[e] += rng.uniform(-0.1, 0.2)
        chi *= mask
        head = chi.copy()
        head[(r > 0.72) & (r < 0.8)] = -1.5  # skull
        cen = rng.uniform(-0.3, 0.3, 3) + np.array([0, 0.75, -0.2])
        head[(((c - cen[:, None, None, None]) / 0.12) ** 2).sum(0) < 1] = 9.0  # sinus air
        lf = forward_field(chi, self.voxel_size, self.b0_dir) * mask
        tf = forward_field(head, self.voxel_size, self.b0_dir) * mask
        t = lambda a: torch.from_numpy(np.asarray(a, np.float32))[None]
        return {"chi": t(chi), "local_field": t(lf), "total_field": t(tf), "mask": t(mask),
                "voxel_size": torch.tensor(self.voxel_size, dtype=torch.float32),
                "b0_dir": torch.tensor(self.b0_dir, dtype=torch.float32)}


class MakePairDataset:
    """Items straight from ``nextqsm_training.simulate.make_pair`` (the hybrid generator).

    Item ``i`` = ``make_pair(seed * 1_000_003 + i, size, **kwargs, **cycle[i % len(cycle)])``:
    ``cycle`` varies options per item (e.g. voxel sizes), deterministically.
    """

    def __init__(self, n: int, size: int, seed: int = 0, cycle: Optional[list] = None, **kwargs):
        self.n, self.size, self.seed, self.kwargs = n, size, seed, kwargs
        self.cycle = list(cycle or [{}])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        from .simulate import make_pair

        d = make_pair(self.seed * 1_000_003 + i, self.size, **self.kwargs, **self.cycle[i % len(self.cycle)])
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        return {**{k: t(d[k])[None] for k in KEYS}, "voxel_size": t(d["voxel_size"]), "b0_dir": t(d["b0_dir"])}


def uses_vsharp(i: int, frac: float) -> bool:
    """Whether item ``i`` gets a V-SHARP input when a fraction ``frac`` of the items should: the
    golden-ratio sequence ``(i * 0.618...) mod 1 < frac`` (deterministic, evenly spread for any n)."""
    return frac >= 1.0 or (frac > 0.0 and (i * 0.6180339887498949) % 1.0 < frac)


def uses_lbv(i: int, frac: float) -> bool:
    """Whether a background-removal item ``i`` (:func:`uses_vsharp`) gets LBV instead of V-SHARP when a fraction
    ``frac`` of them should: the plastic-number sequence ``(i * 0.7548...) mod 1 < frac`` (independent of
    :func:`uses_vsharp`'s golden-ratio sequence)."""
    return frac >= 1.0 or (frac > 0.0 and (i * 0.7548776662466927) % 1.0 < frac)


class VSharpInputs:
    """Adds ``vn_field`` / ``vn_mask``: the background-removed local field of each item's total field and its
    mask, i.e. what the VN gets in the pipeline: V-SHARP (``nextqsm.methods.vsharp``, default radii; eroded
    mask) or, for a share ``lbv_frac`` of them (:func:`uses_lbv`) whose largest voxel edge is at most
    ``lbv_max_voxel_mm`` (the pipeline's ``bfr_fine`` threshold), LBV with the pipeline's peel
    (``nextqsm.methods.lbv``, ``inference.LBV_PEEL``). With ``frac`` < 1 only those items
    (:func:`uses_vsharp`); the others get the true local field."""

    def __init__(self, ds, frac: float = 1.0, lbv_frac: float = 0.0, lbv_max_voxel_mm: float = 1.25):
        self.ds, self.frac = ds, float(frac)
        self.lbv_frac, self.lbv_max_voxel_mm = float(lbv_frac), float(lbv_max_voxel_mm)

    def __len__(self) -> int:
        return len(self.ds)

    def method(self, i: int, voxel_size) -> str:
        """'local', 'vsharp' or 'lbv': the input item ``i`` with ``voxel_size`` (mm) gets."""
        if not uses_vsharp(i, self.frac):
            return "local"
        fine = max(float(v) for v in voxel_size) <= self.lbv_max_voxel_mm + 1e-6
        return "lbv" if fine and uses_lbv(i, self.lbv_frac) else "vsharp"

    def __getitem__(self, i: int) -> dict:
        item = dict(self.ds[i])
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]  # noqa: E731
        vs = tuple(float(v) for v in np.asarray(item["voxel_size"]).ravel())
        how = self.method(i, vs)
        if how == "local":
            m = np.asarray(item["mask"])[0]
            item["vn_field"], item["vn_mask"] = t(np.asarray(item["local_field"])[0] * m), t(m)
            return item
        tf = np.asarray(item["total_field"])[0]
        m = np.asarray(item["mask"])[0] > 0
        if how == "lbv":
            from nextqsm.methods.lbv import lbv
            from nextqsm.models.inference import LBV_PEEL

            lf, m2 = lbv(tf, m, vs, peel=LBV_PEEL)
        else:
            from nextqsm.methods.vsharp import vsharp

            lf, m2 = vsharp(tf, m, vs)
        if m2.sum() < 64:   # the background removal ate the mask (tiny patch): fall back to the true local field
            lf, m2 = np.asarray(item["local_field"])[0], m
        item["vn_field"], item["vn_mask"] = t(lf * m2), t(m2)
        return item


class CachedDataset:
    """Keeps generated items in memory and (optionally) as ``.pt`` files in ``cache_dir``."""

    def __init__(self, ds, cache_dir: Optional[str] = None, tag: str = "train", mem_items: int = 4096):
        self.ds, self.mem, self.mem_items = ds, {}, int(mem_items)
        self.dir = Path(cache_dir) / tag if cache_dir else None
        if self.dir:
            self.dir.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        if i in self.mem:
            return self.mem[i]
        p = self.dir / f"{i:06d}.pt" if self.dir else None
        if p is not None and p.exists():
            item = torch.load(p, weights_only=True)
        else:
            item = self.ds[i]
            item = {k: (v if torch.is_tensor(v) else torch.as_tensor(np.asarray(v), dtype=torch.float32))
                    for k, v in item.items() if k in KEYS + VN_KEYS + ("voxel_size", "b0_dir")}
            if p is not None:
                with atomic_path(p, durable=False) as tmp:   # a cache: rebuilt if lost
                    torch.save(item, tmp)
        if len(self.mem) < self.mem_items:
            self.mem[i] = item
        return item


def make_dataset(data_cfg, split: str = "train"):
    """The configured dataset for ``split`` ('train' | 'val'), cached."""
    n = data_cfg.n_train if split == "train" else data_cfg.n_val
    seed = data_cfg.seed if split == "train" else data_cfg.val_seed
    kwargs = dict(data_cfg.kwargs)
    if split == "val":
        kwargs.update(data_cfg.val_kwargs)
    if data_cfg.source == "toy":
        ds = ToyDataset(n, data_cfg.size, seed, **kwargs)
    elif data_cfg.source == "make_pair":
        ds = MakePairDataset(n, data_cfg.size, seed, **kwargs)
    elif data_cfg.source == "hybrid":
        from .dataset import HybridDataset

        ds = HybridDataset(n, data_cfg.size, seed, **kwargs)
    else:
        from nextqsm.errors import QSMInputError

        raise QSMInputError("config.data.source", f"unknown source {data_cfg.source!r}",
                            "use 'hybrid', 'make_pair' or 'toy'")
    tag = f"{split}_{data_cfg.source}_{data_cfg.size}_{seed}"
    if data_cfg.vn_input == "vsharp":
        frac, lfrac = float(data_cfg.vsharp_frac), float(data_cfg.lbv_frac)
        ds = VSharpInputs(ds, frac, lfrac, data_cfg.lbv_max_voxel_mm)
        tag += ("_vsharp" if frac >= 1.0 else f"_vsharp{frac:g}") + (f"_lbv{lfrac:g}" if lfrac > 0 else "")
    elif data_cfg.vn_input != "local":
        from nextqsm.errors import QSMInputError

        raise QSMInputError("config.data.vn_input", f"unknown value {data_cfg.vn_input!r}", "use 'local' or 'vsharp'")
    return CachedDataset(ds, data_cfg.cache_dir, tag)


def augment(item: dict, seed: tuple) -> dict:
    """Exact physics-preserving augmentation: random flips of each axis (B0 component negated) and a
    random swap of the i/j axes (B0 and voxel size permuted). Deterministic from ``seed``."""
    rng = np.random.default_rng(list(seed))
    b = item["b0_dir"].clone()
    vs = item["voxel_size"].clone()
    out = {k: item[k] for k in _vol_keys(item)}
    flips = [ax for ax in range(3) if rng.random() < 0.5]
    if flips:
        out = {k: torch.flip(v, dims=[a + 1 for a in flips]) for k, v in out.items()}
        for a in flips:
            b[a] = -b[a]
    if rng.random() < 0.5:
        out = {k: v.transpose(1, 2) for k, v in out.items()}
        b = b[[1, 0, 2]]
        vs = vs[[1, 0, 2]]
    out = {k: v.contiguous() for k, v in out.items()}
    out["b0_dir"], out["voxel_size"] = b, vs
    return out


def _item(ds, g: int, seed: int, aug: bool) -> dict:
    """Global sample number ``g``: item ``g % len(ds)``, augmented with seed ``(seed, g)``."""
    it = ds[g % len(ds)]
    return augment(it, (seed, g)) if aug else it


def _collate(items: list) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in _vol_keys(items[0]) + ("voxel_size", "b0_dir")}


def get_batch(ds, step: int, rank: int, world: int, batch: int, seed: int, aug: bool, device) -> dict:
    items = [_item(ds, (step * world + rank) * batch + slot, seed, aug) for slot in range(batch)]
    return {k: v.to(device) for k, v in _collate(items).items()}


class _StepItems(torch.utils.data.Dataset):
    """Sample number -> augmented item (what :func:`get_batch` takes), for a DataLoader."""

    def __init__(self, ds, seed: int, aug: bool):
        self.ds, self.seed, self.aug = ds, seed, aug

    def __len__(self) -> int:
        return 2 ** 62

    def __getitem__(self, g: int) -> dict:
        return _item(self.ds, int(g), self.seed, self.aug)


class _StepSampler(torch.utils.data.Sampler):
    """The sample numbers of steps ``start..end-1`` of this rank, in order (batch slots consecutive)."""

    def __init__(self, start: int, end: int, rank: int, world: int, batch: int):
        self.start, self.end, self.rank, self.world, self.batch = start, end, rank, world, batch

    def __len__(self) -> int:
        return max(self.end - self.start, 0) * self.batch

    def __iter__(self):
        for step in range(self.start, self.end):
            for slot in range(self.batch):
                yield (step * self.world + self.rank) * self.batch + slot


def _worker_init(_):
    torch.set_num_threads(1)


def _label_sources(ds) -> list:
    """The label maps a generated dataset draws from (none for toy data)."""
    inner = getattr(ds, "ds", ds)
    inner = getattr(inner, "ds", inner)     # VSharpInputs wraps the generator
    if hasattr(inner, "sources"):
        return list(inner.sources)
    if isinstance(inner, MakePairDataset):
        from .label_sources import expand_sources

        return expand_sources(inner.kwargs.get("source"))
    return []


#: batches each DataLoader worker makes ahead (scripts/gpu_lease.py times its calibration after them)
PREFETCH_FACTOR = 4


#: separates the echo copies' augmentation seeds from the items' own (seed, g)
ECHO_SALT = 104729


def echo_augment(b: dict, seed: tuple) -> dict:
    """Batch ``b`` (on any device) with every sample re-augmented by :func:`augment` (seed ``seed + (slot,)``):
    a composition of exact flips/swaps, so the physics still holds."""
    n = len(b["b0_dir"])
    return _collate([augment({k: v[i] for k, v in b.items()}, tuple(seed) + (i,)) for i in range(n)])


def batches(ds, start: int, end: int, rank: int, world: int, tc, seed: int, aug: bool, device):
    """Batches of steps ``start..end-1`` on ``device``: exactly :func:`get_batch`'s, made ahead by
    ``tc.workers`` processes (each generates whole items; the order is kept). With ``tc.echo = E > 1``
    step ``t`` gets data step ``t // E``'s batch, re-augmented (:func:`echo_augment`) unless ``t % E == 0``."""
    echo = getattr(tc, "echo", 1)
    if isinstance(echo, bool) or not isinstance(echo, int) or echo < 1:
        from nextqsm.errors import QSMInputError

        raise QSMInputError("config.train.echo", f"must be an integer >= 1, got {echo!r}", "use 1 (off) or 2-4")
    if echo > 1:
        if end <= start:
            return
        d0, d1 = start // echo, (end - 1) // echo + 1
        for d, b in zip(range(d0, d1), _batches(ds, d0, d1, rank, world, tc, seed, aug, device)):
            for e in range(echo):
                t = d * echo + e
                if start <= t < end:
                    yield b if e == 0 else echo_augment(b, (seed, ECHO_SALT, t))
        return
    yield from _batches(ds, start, end, rank, world, tc, seed, aug, device)


def _batches(ds, start: int, end: int, rank: int, world: int, tc, seed: int, aug: bool, device):
    """:func:`batches` without echo: the batches of (data) steps ``start..end-1``."""
    if tc.workers <= 0:
        for step in range(start, end):
            yield get_batch(ds, step, rank, world, tc.batch_size, seed, aug, device)
        return
    if hasattr(ds, "mem_items"):
        ds.mem_items = 0          # workers are separate processes: an in-memory cache would only grow
    for src in _label_sources(ds):
        src.load()                # label maps loaded once here, shared by the forked workers
    loader = torch.utils.data.DataLoader(
        _StepItems(ds, seed, aug), batch_size=tc.batch_size, sampler=_StepSampler(start, end, rank, world, tc.batch_size),
        num_workers=tc.workers, collate_fn=_collate, worker_init_fn=_worker_init, prefetch_factor=PREFETCH_FACTOR,
        pin_memory=device.type == "cuda")
    for b in loader:
        yield {k: v.to(device, non_blocking=True) for k, v in b.items()}


# ----------------------------------------------------------------------------------------- model
def masked_error(a: torch.Tensor, b: torch.Tensor, m: torch.Tensor, demean: bool = True):
    """(d, n): the error ``(a - b)`` inside mask ``m`` (B, 1, ...), optionally minus each sample's mean error in the
    mask, and the mask's voxel count per sample (B, 1, 1, 1, 1), at least 1."""
    n = m.sum(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1.0)
    d = (a - b) * m
    if demean:
        d = (d - d.sum(dim=(1, 2, 3, 4), keepdim=True) / n) * m
    return d, n


def l1(a: torch.Tensor, b: torch.Tensor, m: torch.Tensor, demean: bool = True) -> torch.Tensor:
    """Mean |a - b| inside mask ``m`` (B, 1, ...), optionally after removing each sample's mean in the mask."""
    d, n = masked_error(a, b, m, demean)
    return (d.abs().sum(dim=(1, 2, 3, 4)) / n.flatten()).mean()


def xsim_loss(a: torch.Tensor, b: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """1 - XSIM of ``a`` against ``b`` (ppm, (B, 1, ...)) inside mask ``m``: the differentiable twin of
    :func:`nextqsm.metrics.xsim` (5^3 windows truncated at the edges, L = 1 ppm, K1 = 0.01,
    K2 = 0.001), averaged over the batch. Computed in float32."""
    from nextqsm.metrics import XSIM_C1 as c1, XSIM_C2 as c2

    a, b, m = a.float(), b.float(), m.float()
    pool = lambda v: F.avg_pool3d(v, 5, stride=1, padding=2, count_include_pad=False)  # noqa: E731
    mu_a, mu_b = pool(a), pool(b)
    va = pool(a * a) - mu_a ** 2
    vb = pool(b * b) - mu_b ** 2
    cov = pool(a * b) - mu_a * mu_b
    s = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (va + vb + c2))
    n = m.sum(dim=(1, 2, 3, 4)).clamp_min(1.0)
    return (1.0 - (s * m).sum(dim=(1, 2, 3, 4)) / n).mean()


def mean_offset(a: torch.Tensor, b: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """|mean of (a - b) inside mask ``m``| (ppm; (B, 1, ...) tensors), averaged over the batch: the global level of
    chi, which neither the demeaned L1 nor (for noisy input) a pointwise L1 pins to the truth's."""
    n = m.sum(dim=(1, 2, 3, 4)).clamp_min(1.0)
    return (((a - b) * m).sum(dim=(1, 2, 3, 4)) / n).abs().mean()


def regional_bias(a: torch.Tensor, b: torch.Tensor, m: torch.Tensor, size: int = 7) -> torch.Tensor:
    """Mean |local mean of (a - b)| inside mask ``m`` (ppm; (B, 1, ...) tensors), the local mean taken over the mask's
    voxels in a ``size``^3 box after removing each sample's mean error: a region-scale bias (a whole nucleus too low,
    the contrast shrinkage that a pointwise L1 under noisy input rewards) that voxel noise averages out of."""
    a, b, m = a.float(), b.float(), m.float()
    d, n = masked_error(a, b, m)
    pool = lambda v: F.avg_pool3d(v, size, stride=1, padding=size // 2, count_include_pad=False)  # noqa: E731
    local = pool(d) / pool(m).clamp_min(1e-6)
    return ((local.abs() * m).sum(dim=(1, 2, 3, 4)) / n.flatten()).mean()


def focal_error(a: torch.Tensor, b: torch.Tensor, m: torch.Tensor, threshold: float = 0.3) -> torch.Tensor:
    """Mean |demeaned error| of ``a`` against ``b`` (ppm; (B, 1, ...) tensors) around small strong sources: voxels of
    ``b`` inside mask ``m`` that differ from their 5^3 box mean by more than ``threshold`` ppm (microbleeds,
    calcifications, veins), dilated by one voxel (their halo). Per sample over those voxels; samples without any
    contribute 0. A whole-volume L1 gives a 10-voxel source no weight; the VN shrinks such sources on real-like input
    (benchmarks/results_focal.md)."""
    a, b, m = a.float(), b.float(), m.float()
    d, _ = masked_error(a, b, m)
    box = F.avg_pool3d(b * m, 5, stride=1, padding=2, count_include_pad=False) / \
        F.avg_pool3d(m, 5, stride=1, padding=2, count_include_pad=False).clamp_min(1e-6)
    core = (((b - box).abs() > threshold).float() * m)
    near = F.max_pool3d(core, 3, stride=1, padding=1) * m
    k = near.sum(dim=(1, 2, 3, 4))
    per = (d.abs() * near).sum(dim=(1, 2, 3, 4)) / k.clamp_min(1.0)
    return per.mean()


def vn_inputs(vn: VariationalNetwork, b: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(field, data mask, output mask) of the VN's phase-1 input: ``vn_field``/``vn_mask`` (data.vn_input)
    or the true local field and mask; a ``fill_rim`` VN predicts chi on the whole mask."""
    m = b["mask"]
    mv = b.get("vn_mask", m)
    return b.get("vn_field", b["local_field"]), mv, (m if vn.fill_rim else mv)


class Bundle(nn.Module):
    """All trained networks: ``bfr`` and ``vn`` (NeXtQSM) and ``base_inv`` (baseline inversion)."""

    def __init__(self, model_cfg, checkpointing: bool = False, baseline: bool = True, train_bfr: bool = True,
                 xsim_weight: float = 0.0, mean_weight: float = 0.0, regional_weight: float = 0.0, regional_size: int = 7,
                 focal_weight: float = 0.0, focal_threshold: float = 0.3):
        super().__init__()
        self.train_bfr = train_bfr
        self.xsim_weight = float(xsim_weight)
        self.mean_weight = float(mean_weight)
        self.regional_weight = float(regional_weight)
        self.regional_size = int(regional_size)
        self.focal_weight, self.focal_threshold = float(focal_weight), float(focal_threshold)
        self.bfr = ScaledUNet(model_cfg.bfr, checkpointing)
        self.vn = VariationalNetwork(**model_cfg.vn, checkpointing=checkpointing)
        self.base_inv = ScaledUNet(model_cfg.baseline_inv, checkpointing) if baseline else None

    def forward(self, b: dict, phase: int, demean: bool = True) -> dict:
        m = b["mask"]
        out = {}
        if self.train_bfr or phase == 2:
            lf_hat = self.bfr(b["total_field"], m)
            out["loss_lf"] = l1(lf_hat, b["local_field"], m, demean)
        else:
            out["loss_lf"] = m.new_zeros(())
        if phase == 1:
            f, mv, mo = vn_inputs(self.vn, b)   # true local field, or V-SHARP's (data.vn_input)
            chi_hat = self.vn(f, mv, b["voxel_size"], b["b0_dir"], out_mask=mo)
        else:
            mo = m
            chi_hat = self.vn(lf_hat, m, b["voxel_size"], b["b0_dir"])
        out["loss_chi"] = l1(chi_hat, b["chi"] * mo, mo, demean)
        if self.xsim_weight > 0:
            out["loss_xsim"] = xsim_loss(chi_hat, b["chi"] * mo, mo)
            out["loss_chi"] = out["loss_chi"] + self.xsim_weight * out["loss_xsim"]
        if self.regional_weight > 0:
            out["loss_regional"] = regional_bias(chi_hat, b["chi"] * mo, mo, self.regional_size)
            out["loss_chi"] = out["loss_chi"] + self.regional_weight * out["loss_regional"]
        if self.focal_weight > 0:
            out["loss_focal"] = focal_error(chi_hat, b["chi"] * mo, mo, self.focal_threshold)
            out["loss_chi"] = out["loss_chi"] + self.focal_weight * out["loss_focal"]
        if self.mean_weight > 0:
            out["loss_mean"] = mean_offset(chi_hat, b["chi"] * mo, mo)
            out["loss_chi"] = out["loss_chi"] + self.mean_weight * out["loss_mean"]
        loss = out["loss_lf"] + out["loss_chi"]
        if self.base_inv is not None:
            out["loss_base"] = l1(self.base_inv(b["local_field"], m), b["chi"], m, demean)
            loss = loss + out["loss_base"]
        out["loss"] = loss
        return out


def init_weights(bundle: Bundle, source: str | Path) -> None:
    """Load ``bundle``'s networks from a checkpoint file (``fit``'s ``last.pt``/``best.pt``) or from a
    weights folder (safetensors + manifest, e.g. the shipped ``nextqsm/models/weights``: nextqsm-bfr,
    nextqsm-vn and baseline-inv, checksums verified; networks a VN-only folder lacks come from the shipped
    folder). The architectures must match the config."""
    from nextqsm.errors import QSMInputError

    src = Path(source)
    fix = "point config.train.init_from at a checkpoint or weights folder of the same model config"
    if src.is_dir():
        from nextqsm.models.weights import WEIGHTS_DIR, load_manifest, load_model

        parts = [("nextqsm-bfr", bundle.bfr), ("nextqsm-vn", bundle.vn)]
        parts += [("baseline-inv", bundle.base_inv)] if bundle.base_inv is not None else []
        have = load_manifest(src)["models"]
        if "nextqsm-vn" not in have:
            raise QSMInputError("config.train.init_from", f"{src} holds no nextqsm-vn", fix)
        for name, net in parts:
            # a VN-only folder (a candidate): the other networks come from the shipped weights
            folder = src if name in have else WEIGHTS_DIR
            try:
                net.load_state_dict(load_model(name, folder).state_dict())
            except RuntimeError as exc:   # shape mismatch: another architecture
                raise QSMInputError("config.train.init_from", f"{name} in {folder} does not fit the config: "
                                    f"{str(exc).splitlines()[0]}", fix) from None
        return
    if not src.exists():
        raise QSMInputError("config.train.init_from", f"{src} does not exist", fix)
    init = torch.load(src, map_location="cpu", weights_only=False)
    try:
        missing, _ = bundle.load_state_dict(init["model"], strict=False)
    except RuntimeError as exc:
        raise QSMInputError("config.train.init_from", f"{src} does not fit the config: {str(exc).splitlines()[0]}",
                            fix) from None
    if missing:
        raise QSMInputError("config.train.init_from", f"{src} lacks weights {missing[:4]}", fix)


def lr_lambda(tc) -> Callable[[int], float]:
    total = max(tc.phase1_steps + tc.phase2_steps, 1)

    def f(step: int) -> float:
        if tc.schedule == "constant":
            return 1.0
        if step < tc.warmup_steps:
            return (step + 1) / tc.warmup_steps
        p = min((step - tc.warmup_steps) / max(total - tc.warmup_steps, 1), 1.0)
        return tc.min_lr_frac + (1 - tc.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p))

    return f


# ------------------------------------------------------------------------------------ checkpoints
def rng_state() -> dict:
    s = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save_atomic(obj, path: Path) -> None:
    """torch.save through :func:`nextqsm.io.atomic_path` (flushed to disk, then renamed)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


# ------------------------------------------------------------------------------------ validation
@torch.no_grad()
def validate(bundle: Bundle, base_bfr: Optional[nn.Module], val_ds, device) -> dict:
    """Challenge metrics on the held-out volumes (means over volumes): NRMSE (demeaned, %) of
    NeXtQSM end to end (``nrmse``), of the VN on the true local field (``nrmse_vn``), of the
    background U-Net's local field (``nrmse_lf``), of the baseline (``nrmse_base``), and XSIM."""
    from .evaluate import score

    was = bundle.training
    bundle.eval()
    rows = []
    for i in range(len(val_ds)):
        b = {k: v[None].to(device) for k, v in val_ds[i].items()}
        m = b["mask"]
        lf_hat = bundle.bfr(b["total_field"], m)
        chi_hat = bundle.vn(lf_hat, m, b["voxel_size"], b["b0_dir"])
        f, mv, mo = vn_inputs(bundle.vn, b)
        chi_vn = bundle.vn(f, mv, b["voxel_size"], b["b0_dir"], out_mask=mo)
        np_ = lambda t: t[0, 0].float().cpu().numpy()
        ref, mk = np_(b["chi"]), np_(m) > 0
        e2e, vn = score(np_(chi_hat), ref, mk), score(np_(chi_vn), ref, np_(mo) > 0)
        r = {"nrmse": e2e["nrmse"], "xsim": e2e["xsim"], "nrmse_vn": vn["nrmse"], "xsim_vn": vn["xsim"],
             "xsim_ref_vn": vn["xsim_ref"], "nrmse_lf": score(np_(lf_hat), np_(b["local_field"]), mk)["nrmse"]}
        if bundle.base_inv is not None:
            blf = (base_bfr or bundle.bfr)(b["total_field"], m)
            r["nrmse_base"] = score(np_(bundle.base_inv(blf, m)), ref, mk)["nrmse"]
        rows.append(r)
    bundle.train(was)
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


# ------------------------------------------------------------------------------------------ loop
def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def fit(cfg: Config, resume: bool = False, max_steps: Optional[int] = None,
        progress: Optional[Callable[[float, str], None]] = None) -> dict:
    """Train according to ``cfg`` until ``max_steps`` (global step; default: all configured steps).

    Writes ``cfg.out_dir/{last.pt,best.pt,train.csv,val.csv,config.yaml,tb/}``; with ``resume``
    continues exactly from ``last.pt``. Returns a summary dict (step, last losses, best metrics).
    """
    tc = cfg.train
    rank, world, local_rank = _dist_env()
    use_cuda = tc.device in ("auto", "cuda") and torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    cpu_amp = False
    if not use_cuda:
        torch.set_num_threads(max(int(tc.threads), 1))
        if tc.amp_cpu:
            from nextqsm.models.inference import cpu_has_native_bf16

            cpu_amp = cpu_has_native_bf16()
            if not cpu_amp and rank == 0:
                print("train.amp_cpu: this CPU has no native bfloat16 (AVX512-BF16 / AMX); training in float32",
                      flush=True)
    else:
        torch.backends.cudnn.benchmark = True   # fixed training shapes: let cuDNN pick its fastest kernels
    out = Path(cfg.out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed)
    random.seed(tc.seed)

    bundle = Bundle(cfg.model, tc.checkpointing, tc.train_baseline, tc.train_bfr, tc.xsim_weight,
                    tc.mean_weight, tc.regional_weight, tc.regional_size, tc.focal_weight,
                    tc.focal_threshold).to(device)
    base_bfr: Optional[nn.Module] = None
    fast = {"vn.rho", "vn.lam_gain"}   # step sizes and their noise gains (noise_cond)
    rho = [p for n, p in bundle.named_parameters() if n in fast]
    rest = [p for n, p in bundle.named_parameters() if n not in fast]
    opt = torch.optim.Adam([{"params": rest}, {"params": rho, "lr": tc.lr * tc.lambda_lr_mult, "weight_decay": 0.0}],
                           lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc))
    step, best, history = 0, {}, []
    ckpt = out / "last.pt"
    if resume and ckpt.exists():
        # on the CPU: the RNG states must stay CPU ByteTensors (load_state_dict moves the rest)
        st = torch.load(ckpt, map_location="cpu", weights_only=False)
        bundle.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        step, best = st["step"], st.get("best", {})
        if st.get("base_bfr") is not None:
            base_bfr = ScaledUNet(cfg.model.bfr).to(device)
            base_bfr.load_state_dict(st["base_bfr"])
        set_rng_state(st["rng"])
    elif tc.init_from:   # fresh run (schedule from step 0) starting from another run's weights
        init_weights(bundle, tc.init_from)
    model = bundle
    if world > 1:
        model = nn.parallel.DistributedDataParallel(bundle, device_ids=[local_rank] if use_cuda else None)

    total_steps = tc.phase1_steps + tc.phase2_steps
    end = min(total_steps, max_steps if max_steps is not None else total_steps)
    train_ds = make_dataset(cfg.data, "train")
    val_ds = make_dataset(cfg.data, "val") if cfg.data.n_val > 0 else None
    writer = None
    if rank == 0:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tb"))
        except Exception:  # tensorboard not installed: CSV logs only
            writer = None
    bar = None
    if rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=end, initial=step, desc="nextqsm fit", dynamic_ncols=True, mininterval=5)
    demean = bool(tc.demean_loss)

    def checkpoint_now(val: Optional[dict] = None):
        if rank != 0:
            return
        st = {"step": step, "model": bundle.state_dict(), "optimizer": opt.state_dict(),
              "scheduler": sched.state_dict(), "rng": rng_state(), "best": best, "config": cfg.to_dict(),
              "base_bfr": base_bfr.state_dict() if base_bfr is not None else None}
        save_atomic(st, ckpt)

    last_val_step = -1

    def validate_now(phase: int) -> None:
        """Validate at ``step``: val.csv, TensorBoard, history, and best.pt when it improves."""
        nonlocal best, last_val_step
        val = validate(bundle, base_bfr, val_ds, device)
        val.update(step=step, phase=phase)
        history.append(val)
        last_val_step = step
        _append_csv(out / "val.csv", val)
        if writer:
            for k, v in val.items():
                if k not in ("step",):
                    writer.add_scalar(f"val/{k}", v, step)
        key = "nrmse" if phase == 2 else "nrmse_vn"  # phase 1: the VN alone (on data.vn_input)
        if not best or phase > best.get("phase", 0) or val[key] < best.get(key, math.inf):
            best = dict(val)
            save_atomic({"step": step, "model": bundle.state_dict(), "config": cfg.to_dict(), "metrics": val,
                         "base_bfr": (base_bfr or bundle.bfr).state_dict()}, out / "best.pt")

    t_last = t_start = time.perf_counter()
    bundle.train()
    last = {}
    feed = batches(train_ds, step, end, rank, world, tc, cfg.data.seed, cfg.data.augment, device)
    while step < end:
        if tc.max_minutes is not None and time.perf_counter() - t_start > 60.0 * tc.max_minutes:
            end = step   # wall-time limit: validate (unless this step just was) and checkpoint, then stop
            if rank == 0 and val_ds is not None and last_val_step != step:
                validate_now(1 if step <= tc.phase1_steps else 2)
            checkpoint_now()
            break
        phase = 1 if step < tc.phase1_steps else 2
        if phase == 2 and base_bfr is None and tc.train_baseline:
            base_bfr = copy.deepcopy(bundle.bfr).eval()  # the baseline's U-Net BFR = phase-1 BFR
            for p in base_bfr.parameters():
                p.requires_grad_(False)
        b = next(feed)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=(use_cuda and tc.amp) or cpu_amp):
            losses = model(b, phase, demean)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if tc.grad_clip:
            torch.nn.utils.clip_grad_norm_(bundle.parameters(), tc.grad_clip)
        opt.step()
        sched.step()
        step += 1
        last = {k: float(v.detach()) for k, v in losses.items()}
        if rank == 0:
            bar.update(1)
            bar.set_postfix(phase=phase, loss=f"{last['loss']:.4f}", refresh=False)
            if step % tc.log_every == 0 or step == end:
                now = time.perf_counter()
                row = {"step": step, "phase": phase, "lr": sched.get_last_lr()[0], **last,
                       "sec_per_step": (now - t_last) / tc.log_every, "time": time.time()}
                t_last = now
                _append_csv(out / "train.csv", row)
                if writer:
                    for k, v in row.items():
                        if k not in ("step", "time"):
                            writer.add_scalar(f"train/{k}", v, step)
        if progress is not None and rank == 0:
            progress(step / max(end, 1), f"step {step}/{end} phase {phase} loss {last['loss']:.4f}")
        do_val = val_ds is not None and (step % tc.val_every == 0 or step == end)
        if do_val and rank == 0:
            validate_now(phase)
        if rank == 0 and (step % tc.ckpt_every == 0 or step == end):
            checkpoint_now()
        if rank == 0 and tc.snapshot_every and step % tc.snapshot_every == 0:
            (out / "snapshots").mkdir(exist_ok=True)
            save_atomic({"step": step, "model": bundle.state_dict(), "config": cfg.to_dict()},
                        out / "snapshots" / f"step_{step:07d}.pt")
        if world > 1 and (step % tc.ckpt_every == 0 or step == end):
            dist.barrier()
    if bar is not None:
        bar.close()
    if writer:
        writer.close()
    return {"step": step, "last": last, "best": best, "out_dir": str(out)}


def _append_csv(path: Path, row: dict) -> None:
    """Append ``row`` under the file's header; a new file, or a row with new keys (a resumed run of a
    newer version logs more columns), is (re)written atomically with the union of the columns."""
    header: list[str] = []
    if path.exists():
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), [])
    if header and set(row) <= set(header):
        with open(path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=header, restval="").writerow(row)
        return
    rows = []
    if header:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=header + [k for k in row if k not in header], restval="")
        w.writeheader()
        w.writerows([*rows, row])


# ---------------------------------------------------------------------------------------- average
def average_checkpoints(paths: list[str | Path], out: str | Path) -> dict:
    """Uniform average of the model weights of ``fit`` checkpoints or snapshots of one architecture
    (e.g. the last few snapshots of a run: checkpoints ~50 steps apart scored up to 7 points apart on the
    2016 challenge in session 7, so one checkpoint is a noisy pick). Writes a model-only checkpoint that
    ``export_checkpoint`` takes (config and step of the last input); returns its ``averaged_steps``."""
    from nextqsm.errors import QSMInputError

    if not paths:
        raise QSMInputError("checkpoints", "none given", "pass two or more fit checkpoints or snapshots")
    sts = [torch.load(p, map_location="cpu", weights_only=False) for p in paths]
    keys = set(sts[0]["model"])
    for p, st in zip(paths, sts):
        if set(st["model"]) != keys or any(st["model"][k].shape != sts[0]["model"][k].shape for k in keys):
            raise QSMInputError("checkpoints", f"{p} holds another architecture than {paths[0]}",
                                "average checkpoints of one run (or one config)")
    model = {k: (sum(st["model"][k].double() for st in sts) / len(sts)).to(v.dtype) if v.is_floating_point() else v
             for k, v in sts[-1]["model"].items()}
    steps = [int(st["step"]) for st in sts]
    avg = {"step": steps[-1], "model": model, "config": sts[-1]["config"],
           "metrics": {"averaged_steps": steps}, "base_bfr": sts[-1].get("base_bfr")}
    save_atomic(avg, Path(out))
    return {"averaged_steps": steps, "out": str(out)}


# ---------------------------------------------------------------------------------------- blend
def blend_weights(a_dir: str | Path, b_dir: str | Path, alpha: float, out_dir: str | Path,
                  name: str = "nextqsm-vn") -> dict:
    """Weight-space interpolation of two weights folders' model ``name``: (1 - alpha) A + alpha B.

    Meant for two fine-tunings of one network (e.g. the shipped VN and a candidate trained from it), which
    share a basin, so the blend trades their strengths. ``out_dir`` gets a copy of A's folder (its other
    models and pipeline defaults) with ``name`` replaced; the blend's chi ``level`` is A's ``arch.level`` and
    any per-path ``levels`` are dropped (a new network needs its own ``nextqsm-train calibrate-level``).
    Returns the new manifest entry."""
    import shutil

    from safetensors.torch import load_file

    from nextqsm.errors import QSMInputError
    from nextqsm.models.weights import build_model, load_manifest, save_model

    a, b, out = Path(a_dir), Path(b_dir), Path(out_dir)
    if not 0.0 <= float(alpha) <= 1.0:
        raise QSMInputError("alpha", f"{alpha} is outside [0, 1]", "pass the weight of B between 0 and 1")
    if out.resolve() in (a.resolve(), b.resolve()):
        raise QSMInputError("out", f"{out} is one of the inputs", "write the blend to a new folder")
    ea, eb = (load_manifest(d).get("models", {}).get(name) for d in (a, b))
    if ea is None or eb is None:
        raise QSMInputError("weights", f"model {name!r} is missing from {a if ea is None else b}",
                            "pass two weights folders that both hold it")
    sa, sb = load_file(str(a / ea["file"])), load_file(str(b / eb["file"]))
    if ea["class"] != eb["class"] or ea["arch"].get("unet") != eb["arch"].get("unet") or set(sa) != set(sb) \
            or any(sa[k].shape != sb[k].shape for k in sa):
        raise QSMInputError("weights", f"{a} and {b} hold different architectures of {name!r}",
                            "blend two trainings of one architecture")
    out.mkdir(parents=True, exist_ok=True)
    for f in a.iterdir():
        if f.is_file():
            shutil.copy2(f, out / f.name)
    model = build_model(ea["class"], ea["arch"])
    w = float(alpha)
    model.load_state_dict({k: ((1 - w) * sa[k].double() + w * sb[k].double()).to(sa[k].dtype)
                           if sa[k].is_floating_point() else sa[k] for k in sa})
    training = {"blend": {"alpha": w, **{f"{k}{f}": v for k, d, e in (("a", a, ea), ("b", b, eb))
                                         for f, v in (("", str(d)), ("_sha256", e["sha256"]),
                                                      ("_steps", e.get("training", {}).get("steps")))}}}
    return save_model(model, name, out, training=training)


# ---------------------------------------------------------------------------------------- export
def export_checkpoint(checkpoint: str | Path, weights_dir: Optional[str | Path] = None, data: str = "") -> dict:
    """Write the networks a ``fit`` checkpoint trained as safetensors + manifest entries.

    Models: ``nextqsm-vn``; ``nextqsm-bfr`` unless the run kept it frozen (``train.train_bfr: false``
    and no phase-2 step: it is still its ``init_from`` copy, so the folder's entry is left alone);
    ``baseline-bfr`` (the phase-1 background U-Net) and ``baseline-inv`` when the run trained the
    baseline. A VN fine-tuned from a weights folder keeps that folder's final consistency step (``dc_mu``,
    ``dc_noise``: inference settings, not learned) unless its own config sets one, but not its calibrated ``level``
    (fine-tuning moves chi's level: run ``nextqsm-train calibrate-level`` on the new folder). The manifest records the architecture, the training config, ``data``, the step, the
    validation metrics stored in the checkpoint and, for a fine-tuned run, what it started from
    (``init_from``: the path, and for a weights folder the source model's sha256 and steps).
    Returns the entries written.
    """
    from nextqsm.models.weights import save_model

    from .config import from_dict

    st = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = from_dict(st["config"])
    bundle = Bundle(cfg.model, baseline=cfg.train.train_baseline)
    bundle.load_state_dict(st["model"])
    metrics = st.get("metrics") or st.get("best") or {}
    training = {"steps": int(st["step"]), "config": st["config"], "data": data or _describe_data(cfg),
                "checkpoint": str(checkpoint)}

    def with_init(name: str) -> dict:
        src = cfg.train.init_from
        if not src:
            return training
        info: dict = {"path": str(src)}
        if Path(src).is_dir():
            from nextqsm.models.weights import load_manifest

            e = load_manifest(src)["models"].get(name, {})
            info.update(model=name, sha256=e.get("sha256"), steps=e.get("training", {}).get("steps"))
        return {**training, "init_from": info}

    src = cfg.train.init_from
    if src and Path(src).is_dir() and not (bundle.vn.dc_mu or bundle.vn.dc_noise):
        # the final consistency step is an inference setting, not learned: a fine-tuned VN keeps its source's
        from nextqsm.models.weights import load_manifest

        arch = load_manifest(src)["models"].get("nextqsm-vn", {}).get("arch", {})
        bundle.vn.set_consistency(arch.get("dc_mu", 0.0), arch.get("dc_noise"))
    if src and Path(src).is_dir():
        # the pipeline's defaults (background removal, refinement) live in the folder's manifest: a new folder gets
        # its source's, else a VN exported alone would silently run another pipeline (e.g. the U-Net BFR)
        from nextqsm.models.weights import load_manifest, set_defaults

        src_defaults = load_manifest(src).get("defaults")
        if weights_dir and src_defaults and not load_manifest(weights_dir).get("defaults"):
            set_defaults(weights_dir, **src_defaults)
    bfr_trained = cfg.train.train_bfr or int(st["step"]) > cfg.train.phase1_steps
    entries = {"nextqsm-vn": save_model(bundle.vn, "nextqsm-vn", weights_dir, with_init("nextqsm-vn"), metrics)}
    if bfr_trained:
        entries["nextqsm-bfr"] = save_model(bundle.bfr, "nextqsm-bfr", weights_dir, with_init("nextqsm-bfr"), metrics)
    if bundle.base_inv is not None:
        base_bfr = ScaledUNet(cfg.model.bfr)
        base_bfr.load_state_dict(st.get("base_bfr") or bundle.bfr.state_dict())
        entries["baseline-bfr"] = save_model(base_bfr, "baseline-bfr", weights_dir, training, metrics)
        same = bundle.bfr.state_dict()
        if all(torch.equal(v, same[k]) for k, v in base_bfr.state_dict().items()):
            from nextqsm.models.weights import alias_model   # phase-1 checkpoint: the two BFRs are one network

            entries["baseline-bfr"] = alias_model("baseline-bfr", "nextqsm-bfr", weights_dir)
        entries["baseline-inv"] = save_model(bundle.base_inv, "baseline-inv", weights_dir, with_init("baseline-inv"),
                                             metrics)
    return entries


def _describe_data(cfg: Config) -> str:
    d = cfg.data
    return (f"source={d.source} size={d.size}^3 n_train={d.n_train} seed={d.seed} kwargs={d.kwargs}; "
            f"validation: n_val={d.n_val} seed={d.val_seed} kwargs={d.val_kwargs}")
