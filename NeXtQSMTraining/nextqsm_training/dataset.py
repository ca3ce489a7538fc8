"""Torch datasets of hybrid training pairs: on the fly (:class:`HybridDataset`) or from a cache
written by :mod:`cache` (:class:`CachedDataset`).

Items are dicts of tensors: ``chi``, ``local_field``, ``total_field``, ``mask`` shaped
(1, S, S, S) float32 (mask float32 0/1), ``voxel_size`` and ``b0_dir`` (3,) float32, and ``index``.
Item ``i`` of a dataset with base ``seed`` is :func:`simulate.make_pair` with seed
``pair_seed(seed, i)``: deterministic per index, independent of the worker that makes it, so
``DataLoader(num_workers=k)`` is safe (each worker loads its label maps once and keeps them).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .label_sources import expand_sources
from .simulate import make_pair

TENSOR_KEYS = ("chi", "local_field", "total_field", "mask")


def pair_seed(seed: int, index: int) -> int:
    """The make_pair seed of item ``index`` for a dataset seeded with ``seed`` (63-bit)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def to_item(pair: dict, index: int) -> dict:
    """Numpy pair (from make_pair or a cache) -> dict of tensors."""
    item: dict[str, Any] = {}
    for k, v in pair.items():
        if isinstance(v, np.ndarray) and v.ndim == 3:
            item[k] = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))[None]
    item["voxel_size"] = torch.as_tensor(np.asarray(pair["voxel_size"], np.float32))
    item["b0_dir"] = torch.as_tensor(np.asarray(pair["b0_dir"], np.float32))
    item["index"] = torch.tensor(int(index))
    return item


class HybridDataset(Dataset):
    """``n`` on-the-fly hybrid pairs of ``size``^3 voxels.

    ``sources``: a source spec for :func:`label_sources.expand_sources` (default: SynthSeg training
    maps when present, else procedural heads). ``opts``: options of :func:`simulate.make_pair`
    (e.g. ``noise="random"`` for training inputs with field noise; the clean fields then come
    as ``local_field_clean`` / ``total_field_clean``). ``return_labels`` adds ``labels``.
    ``preload=True`` loads every label map now (a few s each), so that forked DataLoader workers
    share them instead of each loading its own copy.
    """

    def __init__(self, n: int, size: int = 64, seed: int = 0, sources=None, return_labels: bool = False,
                 preload: bool = False, **opts):
        self.n = int(n)
        self.size = int(size)
        self.seed = int(seed)
        self.sources = expand_sources(sources)
        if preload:
            for s in self.sources:
                s.load()
        self.return_labels = return_labels
        self.opts = opts

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.n:
            raise IndexError(index)
        pair = make_pair(pair_seed(self.seed, index), self.size, self.sources,
                         return_labels=self.return_labels, **self.opts)
        item = to_item(pair, index)
        if self.return_labels:
            item["labels"] = torch.from_numpy(pair["labels"])[None]
        return item


def add_field_noise(item: dict, sigma: float, seed: int) -> dict:
    """Add Gaussian noise (std ``sigma`` ppm, seeded) to the masked fields of a tensor item; the
    clean fields are kept as ``*_clean``."""
    g = torch.Generator().manual_seed(int(seed))
    m = item["mask"]
    for k in ("local_field", "total_field"):
        item[k + "_clean"] = item[k]
        item[k] = (item[k] + sigma * torch.randn(item[k].shape, generator=g)) * m
    return item


class CachedDataset(Dataset):
    """Pairs read from a cache folder written by :func:`cache.write_cache` (any format).

    The cache holds noise-free fields; ``noise`` (a std in ppm, or ``"random"``: local-field RMS
    divided by an SNR drawn from ``snr``) adds Gaussian field noise on the fly, deterministic per
    index and ``seed`` (clean fields then as ``*_clean``).
    """

    def __init__(self, root, noise: float | str | None = None, snr=(20.0, 200.0), seed: int = 0):
        from .cache import CacheReader

        self.reader = CacheReader(root)
        self.noise, self.snr, self.seed = noise, snr, int(seed)

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> dict:
        item = to_item(self.reader[index], index)
        if self.noise:
            s = pair_seed(self.seed + 1_000_003, index)
            if self.noise == "random":
                m = item["mask"] > 0
                rms = float(item["local_field"][m].pow(2).mean().sqrt()) if m.any() else 0.0
                sigma = rms / np.random.default_rng(s).uniform(*self.snr)
            else:
                sigma = float(self.noise)
            add_field_noise(item, sigma, s)
        return item
