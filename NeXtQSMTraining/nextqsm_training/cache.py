"""Cache writer and reader for hybrid pairs: sharded ``.npz`` files (or NIfTI folders) plus a JSON
manifest, all written atomically (temp file in the same folder, then rename).

Shard layout (``format="shards"``): ``shard_XXXXX.npz`` (uncompressed) holding ``count`` pairs,
stored *inside the mask only* (lossless, ~7x smaller than full volumes): ``mask_bits`` (count,
ceil(S^3/8)) packed bits, ``chi``/``local_field``/``total_field`` the in-mask float32 values of all
pairs concatenated, ``offsets`` (count+1) into them, ``voxel_size``/``b0_dir`` (count, 3),
``seed`` (count,), ``source`` (count,) names.

NIfTI layout (``format="nifti"``): ``pair_XXXXX/{chi,localfield,totalfield,mask}.nii.gz`` and
``pair_XXXXX/pair.json`` (voxel size mm, B0 direction in voxel axes, seed, source); affine =
diag(voxel size), RAS+, centred on the grid.

``manifest.json``: format, version, n, size, seed, sources, options, and the list of finished
shards; it is rewritten after every shard, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nextqsm.io import atomic_path, save_nifti, write_json_atomic

MANIFEST = "manifest.json"
FORMAT_NAME = "nextqsm-hybrid-cache"
FORMAT_VERSION = 1
FIELDS = ("chi", "local_field", "total_field")
NIFTI_NAMES = {"chi": "chi", "local_field": "localfield", "total_field": "totalfield", "mask": "mask"}


def pair_affine(voxel_size, size: int) -> np.ndarray:
    """RAS+ affine of a generated pair: diag(voxel size), grid centred on the origin."""
    vs = np.asarray(voxel_size, float)
    aff = np.diag(list(vs) + [1.0])
    aff[:3, 3] = -vs * (size - 1) / 2
    return aff


def _save_npz_atomic(path: Path, **arrays) -> None:
    with atomic_path(path, suffix=".npz", durable=False) as tmp:   # a cache: rebuilt if lost
        np.savez(tmp, **arrays)


def write_shard(path: Path, pairs: list[dict]) -> None:
    """Write ``pairs`` (from make_pair) as one in-mask shard."""
    masks = [p["mask"].astype(bool) for p in pairs]
    counts = [int(m.sum()) for m in masks]
    arrays: dict[str, Any] = {
        "shape": np.array(pairs[0]["mask"].shape, np.int32),
        "mask_bits": np.stack([np.packbits(m.ravel()) for m in masks]),
        "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "voxel_size": np.stack([np.asarray(p["voxel_size"], np.float32) for p in pairs]),
        "b0_dir": np.stack([np.asarray(p["b0_dir"], np.float32) for p in pairs]),
        "seed": np.array([int(p.get("seed", -1)) for p in pairs], np.int64),
        "source": np.array([str(p.get("source", "")) for p in pairs]),
    }
    for k in FIELDS:
        arrays[k] = np.concatenate([p[k][m] for p, m in zip(pairs, masks)]).astype(np.float32)
    _save_npz_atomic(path, **arrays)


def read_shard(path: Path) -> list[dict]:
    """Pairs of one shard as dicts of full numpy volumes (same keys as make_pair)."""
    z = np.load(path)
    shape = tuple(int(s) for s in z["shape"])
    nvox = int(np.prod(shape))
    out = []
    off = z["offsets"]
    vals = {k: z[k] for k in FIELDS}
    for i in range(len(z["seed"])):
        m = np.unpackbits(z["mask_bits"][i])[:nvox].astype(bool).reshape(shape)
        p = {"mask": m.astype(np.uint8), "voxel_size": z["voxel_size"][i], "b0_dir": z["b0_dir"][i],
             "seed": int(z["seed"][i]), "source": str(z["source"][i])}
        for k in FIELDS:
            v = np.zeros(shape, np.float32)
            v[m] = vals[k][off[i]:off[i + 1]]
            p[k] = v
        out.append(p)
    return out


def write_nifti_pair(folder: Path, pair: dict) -> None:
    """One pair as NIfTI files ``chi``, ``localfield``, ``totalfield``, ``mask`` + ``pair.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    size = pair["mask"].shape[0]
    aff = pair_affine(pair["voxel_size"], size)
    for k, name in NIFTI_NAMES.items():
        dt = np.uint8 if k == "mask" else np.float32
        save_nifti(pair[k], aff, folder / f"{name}.nii.gz", dtype=dt,
                   description=f"NeXtQSM hybrid {name}" + ("" if k == "mask" else " [ppm]"))
    write_json_atomic(folder / "pair.json", {
        "voxel_size_mm": [float(v) for v in pair["voxel_size"]],
        "b0_dir": [float(v) for v in pair["b0_dir"]],
        "seed": int(pair.get("seed", -1)), "source": str(pair.get("source", "")),
        "units": "ppm (chi relative to CSF; fields in ppm of B0)",
        "files": {k: f"{v}.nii.gz" for k, v in NIFTI_NAMES.items()},
    })


def read_nifti_pair(folder: Path) -> dict:
    import nibabel as nib

    meta = json.loads((folder / "pair.json").read_text())
    p = {k: np.asarray(nib.load(str(folder / f"{v}.nii.gz")).dataobj).astype(np.float32 if k != "mask" else np.uint8)
         for k, v in NIFTI_NAMES.items()}
    p["voxel_size"] = np.asarray(meta["voxel_size_mm"], np.float32)
    p["b0_dir"] = np.asarray(meta["b0_dir"], np.float32)
    p["seed"] = meta.get("seed", -1)
    p["source"] = meta.get("source", "")
    return p


def _identity(x):
    return x


def _worker_init(_):
    import torch

    torch.set_num_threads(1)


class _Pairs:
    """Map-style dataset of numpy pairs (picklable, for DataLoader workers)."""

    def __init__(self, idx, seed, size, srcs, labels, opts):
        self.idx, self.seed, self.size, self.srcs, self.labels, self.opts = idx, seed, size, srcs, labels, opts

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, j):
        from .dataset import pair_seed
        from .simulate import make_pair

        i = self.idx[j]
        s = pair_seed(self.seed, i)
        p = make_pair(s, self.size, self.srcs, return_labels=self.labels, **self.opts)
        p["seed"], p["index"] = s, i
        return p


def write_cache(out: str | os.PathLike, n: int, size: int, seed: int = 0, sources=None, fmt: str = "shards",
                shard_size: int = 16, qa: bool = True, progress: bool = True, workers: int = 0,
                on_pair: Callable[[int], None] | None = None, **opts) -> dict:
    """Generate ``n`` pairs of ``size``^3 into ``out`` (``fmt`` "shards" or "nifti"); returns the manifest.

    Pair ``i`` is :func:`simulate.make_pair` with seed ``dataset.pair_seed(seed, i)`` (so the cache
    equals ``HybridDataset(n, size, seed, sources, **opts)``). Shards of ``shard_size`` pairs; a QA
    PNG (:func:`qa.qa_sheet`) per shard. ``workers`` > 0 uses that many worker processes.
    Resumes: shards already listed in an existing matching manifest are skipped.
    """
    import torch
    from nextqsm.errors import QSMInputError
    from tqdm import tqdm

    from .label_sources import expand_sources

    if opts.get("noise"):
        raise QSMInputError("noise", "the cache stores noise-free fields",
                            "add noise when training: CachedDataset(root, noise='random') or HybridDataset(noise=...)")

    if fmt not in ("shards", "nifti"):
        raise QSMInputError("--format", f"unknown format {fmt!r}", "use shards or nifti")
    if n < 1 or size < 16:
        raise QSMInputError("--n/--size", f"n={n}, size={size}", "use n >= 1 and size >= 16")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    srcs = expand_sources(sources)
    params = {"n": int(n), "size": int(size), "seed": int(seed), "format": fmt, "shard_size": int(shard_size),
              "sources": [f"{s.kind}:{s.key}" for s in srcs], "options": {k: v for k, v in sorted(opts.items())}}
    manifest = {"format_name": FORMAT_NAME, "version": FORMAT_VERSION, **params, "shards": [],
                "complete": False, "units": "ppm"}
    mpath = root / MANIFEST
    if mpath.exists():
        try:
            old = json.loads(mpath.read_text())
            if all(old.get(k) == v for k, v in json.loads(json.dumps(params)).items()):
                manifest["shards"] = [s for s in old.get("shards", []) if (root / s["file"]).exists()]
        except ValueError:
            pass
    done = {s["first_index"] for s in manifest["shards"]}
    todo = [i for i in range(0, n, shard_size) if i not in done]

    indices = [i for f in todo for i in range(f, min(f + shard_size, n))]
    if workers and indices:
        for s in srcs:   # load once here; forked workers share the maps
            s.load()
    loader = torch.utils.data.DataLoader(_Pairs(indices, seed, size, srcs, qa, opts), batch_size=None,
                                         num_workers=int(workers), collate_fn=_identity,
                                         worker_init_fn=_worker_init)
    bar = tqdm(total=n, initial=n - len(indices), unit="pair", disable=not progress, desc="generate")
    t0 = time.time()
    batch: list[dict] = []
    for p in loader:
        batch.append(p)
        bar.update(1)
        if on_pair:
            on_pair(p["index"])
        first = batch[0]["index"]
        if len(batch) == min(shard_size, n - first):
            k = first // shard_size
            if fmt == "shards":
                fname = f"shard_{k:05d}.npz"
                write_shard(root / fname, batch)
            else:
                fname = f"pairs_{k:05d}"
                for q in batch:
                    write_nifti_pair(root / f"pair_{q['index']:05d}", q)
            entry = {"file": fname, "first_index": first, "count": len(batch),
                     "pairs": [f"pair_{q['index']:05d}" for q in batch] if fmt == "nifti" else None}
            if qa:
                from .qa import qa_sheet
                png = f"qa_{k:05d}.png"
                qa_sheet(batch[:4], root / png, title=f"{root.name}: pairs {first}-{first + len(batch) - 1}")
                entry["qa"] = png
            manifest["shards"] = sorted(manifest["shards"] + [entry], key=lambda s: s["first_index"])
            write_json_atomic(mpath, manifest)
            batch = []
    bar.close()
    manifest["complete"] = sum(s["count"] for s in manifest["shards"]) == n
    manifest["seconds"] = round(time.time() - t0, 2)
    write_json_atomic(mpath, manifest)
    return manifest


class CacheReader:
    """Random access to the pairs of a cache folder (any format), in index order."""

    def __init__(self, root: str | os.PathLike):
        from nextqsm.errors import QSMInputError

        self.root = Path(root)
        mp = self.root / MANIFEST
        if not mp.exists():
            raise QSMInputError(str(self.root), "no manifest.json (not a generated cache)",
                                "run `nextqsm-train generate --out DIR` first")
        self.manifest = json.loads(mp.read_text())
        self.shards = self.manifest["shards"]
        self._starts = [s["first_index"] for s in self.shards]
        self._loaded: tuple[int, list[dict]] | None = None

    def __len__(self) -> int:
        return sum(s["count"] for s in self.shards)

    def __getitem__(self, index: int) -> dict:
        import bisect

        k = bisect.bisect_right(self._starts, index) - 1
        if k < 0 or index >= len(self):
            raise IndexError(index)
        s = self.shards[k]
        j = index - s["first_index"]
        if self.manifest["format"] == "nifti":
            return read_nifti_pair(self.root / s["pairs"][j])
        if self._loaded is None or self._loaded[0] != k:
            self._loaded = (k, read_shard(self.root / s["file"]))
        return self._loaded[1][j]
