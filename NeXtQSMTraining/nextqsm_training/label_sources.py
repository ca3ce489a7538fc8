"""Label-map sources for the hybrid generator: SynthSeg training maps, user FreeSurfer/SynthSeg
segmentations (.mgz/.nii[.gz]) and a procedural head that needs no data.

Every source yields a :class:`LabelVolume`: compact label indices (uint8, RAS+ voxel order, cropped to
the head with a margin), the FreeSurfer code of each index, and the voxel size in mm. Volumes are
loaded once per process and kept (``functools.lru_cache``), so on-the-fly generation never reads
the 256^3 files again. Reorientation to RAS uses nibabel's orientation tools (exact axis flips and
permutations, no resampling), so B0 = (0, 0, 1) is the head's inferior->superior axis.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from .labels import Tissue, is_brain_label, tissue_lut

#: Default location of the 16 SynthSeg training maps (``../shared/data`` next to the repository).
SYNTHSEG_DIR = Path(os.environ.get(
    "NEXTQSM_SYNTHSEG_DIR",
    Path(__file__).resolve().parents[3] / "shared" / "data" / "synthseg_training_label_maps"))
ALL_MAPS = tuple(range(1, 17))
#: Maps kept out of training: the benchmark heads (:mod:`heads`) are built from them.
HELD_OUT = (13, 14, 15, 16)
TRAIN_MAPS = tuple(i for i in ALL_MAPS if i not in HELD_OUT)


@dataclass
class LabelVolume:
    """A label map: ``idx`` (i, j, k) uint8 indices into ``codes`` (FreeSurfer labels), RAS+ order."""

    idx: np.ndarray
    codes: np.ndarray
    voxel_size: tuple[float, float, float]
    name: str

    @property
    def tissue(self) -> np.ndarray:
        """Tissue class per index (uint8, see :class:`labels.Tissue`)."""
        return tissue_lut(self.codes)

    @property
    def brain_index_mask(self) -> np.ndarray:
        """Bool per index: label inside the brain (tissue + ventricles)."""
        return np.array([is_brain_label(c) for c in self.codes], bool)

    def brain_centre_mm(self) -> np.ndarray:
        """Centroid of the brain labels in mm from voxel (0, 0, 0) (computed once)."""
        if getattr(self, "_centre", None) is None:
            self._centre = self._brain_centre()
        return self._centre.copy()

    def _brain_centre(self) -> np.ndarray:
        b = self.brain_index_mask[self.idx]
        pts = np.nonzero(b)
        return np.array([p.mean() for p in pts]) * np.asarray(self.voxel_size)

    def brain_extent_mm(self) -> np.ndarray:
        """Bounding-box size of the brain labels in mm (3,) (computed once)."""
        if getattr(self, "_extent", None) is None:
            self._extent = self._brain_extent()
        return self._extent.copy()

    def _brain_extent(self) -> np.ndarray:
        b = self.brain_index_mask[self.idx]
        ext = []
        for ax in range(3):
            nz = np.nonzero(b.any(axis=tuple(a for a in range(3) if a != ax)))[0]
            ext.append((nz[-1] - nz[0] + 1) * self.voxel_size[ax])
        return np.array(ext)


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 indices, codes) with codes[0] == 0; a lookup table instead of a sort (fast)."""
    from nextqsm.errors import QSMInputError

    lo = int(labels.min())
    if lo < 0:
        raise QSMInputError("label map", "it has negative labels", "pass a FreeSurfer/SynthSeg segmentation")
    hist = np.bincount(labels.ravel())
    codes = np.nonzero(hist)[0]
    if codes[0] != 0:
        codes = np.concatenate([[0], codes])
    if len(codes) > 255:
        raise QSMInputError("label map", f"it has {len(codes)} distinct labels (max 255)",
                            "merge labels (e.g. use aseg instead of a fine parcellation)")
    lut = np.zeros(hist.size, np.uint8)
    lut[codes] = np.arange(len(codes), dtype=np.uint8)
    return lut[labels], codes.astype(np.int32)


def _crop(labels: np.ndarray, margin: int) -> np.ndarray:
    nz = np.nonzero(labels)
    sl = tuple(slice(max(0, int(p.min()) - margin), min(n, int(p.max()) + margin + 1))
               for p, n in zip(nz, labels.shape))
    return labels[sl]


def load_label_file(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read an integer label map (.nii/.nii.gz/.mgz) reoriented to RAS+; returns (labels int32, voxel size mm)."""
    import nibabel as nib
    from nextqsm.errors import QSMInputError

    p = Path(path)
    if not p.exists():
        raise QSMInputError(str(p), "the label map does not exist",
                            "pass a FreeSurfer aseg/aparc+aseg or SynthSeg output (.mgz/.nii/.nii.gz)")
    img = nib.load(str(p))
    data = np.asarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise QSMInputError(str(p), f"expected a 3D label map, got shape {data.shape}", "pass a 3D segmentation")
    if not np.allclose(data, np.round(data)):
        raise QSMInputError(str(p), "the values are not integer labels", "pass a segmentation, not an image")
    data = np.round(data).astype(np.int32)
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine),
                                           nib.orientations.axcodes2ornt("RAS"))
    data = nib.orientations.apply_orientation(data, ornt)
    zooms = np.asarray(img.header.get_zooms()[:3], float)
    perm = [int(ax) for ax in ornt[:, 0]]
    vs = np.empty(3)
    vs[perm] = zooms  # source axis a goes to output axis perm[a]
    return np.ascontiguousarray(data), tuple(float(v) for v in vs)


def mark_sulcal_csf(labels: np.ndarray, voxel_size: Sequence[float], radius_mm: float = 2.5) -> np.ndarray:
    """Relabel CSF inside the morphological closing of the brain region (a cube of +-``radius_mm``,
    separable, torch) as :data:`labels.SULCAL_CSF`, so that the QSM mask (brain + sulcal CSF) is a
    plain lookup at run time."""
    import torch

    from .external import dilate, erode
    from .labels import SULCAL_CSF, is_brain_label, tissue_of

    codes = np.nonzero(np.bincount(labels.ravel()))[0]
    brain_lut = np.array([is_brain_label(c) for c in range(codes.max() + 1)])
    csf_lut = np.array([tissue_of(c) == Tissue.CSF and not is_brain_label(c) for c in range(codes.max() + 1)])
    if not brain_lut[codes].any() or not csf_lut[codes].any():
        return labels
    r = max(1, int(round(radius_mm / float(np.min(voxel_size)))))
    brain = brain_lut[labels]
    closed = erode(dilate(torch.from_numpy(brain), r), r).numpy()
    out = labels.copy()
    out[closed & csf_lut[labels]] = SULCAL_CSF
    return out


def add_head_shells(labels: np.ndarray, voxel_size: Sequence[float]) -> np.ndarray:
    """Add synthetic CSF / skull / marrow / scalp / skin shells around a brain-only segmentation.

    Used for FreeSurfer ``aseg``-style maps that have no extra-cerebral labels (their 0 means
    "not brain"). Thicknesses (mm from the brain surface): CSF 0-2, bone 2-4 and 6-8 with marrow
    4-6, soft tissue 8-14, skin 14-16, then air.
    """
    from scipy import ndimage as ndi

    vs = np.asarray(voxel_size, float)
    pad = int(np.ceil(18 / vs.min()))
    lab = np.pad(labels, pad)
    d = ndi.distance_transform_edt(lab == 0, sampling=vs)
    out = lab.copy()
    zero = lab == 0
    for lo, hi, code in ((0, 2, 24), (2, 4, 515), (4, 6, 516), (6, 8, 515), (8, 14, 507), (14, 16, 511)):
        out[zero & (d > lo) & (d <= hi)] = code
    return out


PREP_VERSION = 2   # bump when the preparation below changes (invalidates the disk cache)


def _disk_cache_dir() -> Path | None:
    """Folder for prepared label volumes (``NEXTQSM_LABEL_CACHE``, default ~/.cache/nextqsm/labels;
    set it to an empty string to disable)."""
    d = os.environ.get("NEXTQSM_LABEL_CACHE")
    if d == "":
        return None
    return Path(d) if d else Path.home() / ".cache" / "nextqsm" / "labels"


def _prepare(kind: str, key: str) -> tuple[np.ndarray, np.ndarray, tuple, str]:
    if kind == "synthseg":
        labels, vs = load_label_file(synthseg_path(int(key)))
        name = f"synthseg_{int(key):02d}"
    elif kind == "file":
        labels, vs = load_label_file(key)
        if labels.max() < 500:   # brain-only segmentation: add a synthetic head around it
            labels = add_head_shells(labels, vs)
        name = Path(key).name
    elif kind == "procedural":
        labels, vs = procedural_head(int(key))
        name = f"procedural_{int(key)}"
    else:
        raise ValueError(kind)
    labels = mark_sulcal_csf(_crop(labels, margin=4), vs)
    idx, codes = _compact(labels)
    return idx, codes, tuple(float(v) for v in vs), name


@functools.lru_cache(maxsize=64)
def _cached_volume(kind: str, key: str, stride: int) -> LabelVolume:
    """Prepared label volume, cached in memory (per process) and on disk (across processes: a
    plain .npz keyed by the source file's path, size and mtime; written atomically)."""
    if stride > 1:   # strided copies come from the cached full-resolution volume
        v = _cached_volume(kind, key, 1)
        o = stride // 2
        return LabelVolume(np.ascontiguousarray(v.idx[o::stride, o::stride, o::stride]), v.codes,
                           tuple(x * stride for x in v.voxel_size), v.name)
    cache = _disk_cache_dir()
    cfile = None
    if cache is not None:
        import hashlib

        src = synthseg_path(int(key)) if kind == "synthseg" else Path(key) if kind == "file" else None
        stamp = f"{src.resolve()}:{src.stat().st_size}:{src.stat().st_mtime_ns}" if src is not None else key
        h = hashlib.sha1(f"{PREP_VERSION}:{kind}:{stamp}".encode()).hexdigest()[:16]
        cfile = cache / f"{kind}_{h}.npz"
        if cfile.exists():
            try:
                z = np.load(cfile)
                return LabelVolume(z["idx"], z["codes"], tuple(float(v) for v in z["voxel_size"]), str(z["name"]))
            except (OSError, ValueError, KeyError):
                pass
    idx, codes, vs, name = _prepare(kind, key)
    if cfile is not None:
        try:
            from nextqsm.io import atomic_path

            with atomic_path(cfile, suffix=".npz", durable=False) as tmp:   # a cache: rebuilt if lost
                np.savez(tmp, idx=idx, codes=codes, voxel_size=np.array(vs), name=np.array(name))
        except OSError:
            pass
    return LabelVolume(np.ascontiguousarray(idx), codes, vs, name)


def synthseg_path(index: int) -> Path:
    """Path of SynthSeg training map ``index`` (1-16)."""
    return SYNTHSEG_DIR / f"training_seg_{int(index):02d}.nii.gz"


def synthseg_available(index: int = 1) -> bool:
    return synthseg_path(index).exists()


SourceSpec = Union[str, int, os.PathLike, "LabelSource"]


@dataclass(frozen=True)
class LabelSource:
    """A reference to a label map: ``kind`` in {'synthseg', 'file', 'procedural'} and a ``key``
    (map index, path, or procedural variant)."""

    kind: str
    key: str

    def load(self, stride: int = 1) -> LabelVolume:
        """The (cached) label volume, optionally strided by an integer factor (nearest downsampling)."""
        return _cached_volume(self.kind, self.key, int(stride))

    def native_voxel_size(self) -> float:
        return 2.0 if self.kind == "procedural" else 1.0


N_PROCEDURAL = 8


def expand_sources(spec: SourceSpec | Sequence[SourceSpec] | None = None) -> list[LabelSource]:
    """Turn a source spec into a list of :class:`LabelSource`.

    ``None`` -> the SynthSeg training maps (:data:`TRAIN_MAPS`) when present, else the procedural
    heads. ``"synthseg"`` -> training maps; ``"synthseg:all"`` -> all 16; ``"synthseg:3"`` -> one map;
    ``"procedural"`` -> :data:`N_PROCEDURAL` procedural variants; an int -> that SynthSeg map; a path
    to a file -> that file; a path to a folder -> every .nii/.nii.gz/.mgz inside it.
    """
    from nextqsm.errors import QSMInputError

    if spec is None:
        spec = "synthseg" if synthseg_available(TRAIN_MAPS[0]) else "procedural"
    if isinstance(spec, (str, int, os.PathLike, LabelSource)):
        spec = [spec]
    out: list[LabelSource] = []
    for s in spec:
        if isinstance(s, LabelSource):
            out.append(s)
        elif isinstance(s, (int, np.integer)):
            out.append(LabelSource("synthseg", str(int(s))))
        elif isinstance(s, str) and s.startswith("synthseg"):
            part = s.split(":", 1)[1] if ":" in s else "train"
            maps = TRAIN_MAPS if part == "train" else ALL_MAPS if part == "all" else [int(x) for x in part.split(",")]
            missing = [m for m in maps if not synthseg_available(m)]
            if missing:
                raise QSMInputError("source synthseg", f"SynthSeg maps {missing} not found in {SYNTHSEG_DIR}",
                                    "set NEXTQSM_SYNTHSEG_DIR or use --source procedural")
            out += [LabelSource("synthseg", str(m)) for m in maps]
        elif isinstance(s, str) and s.startswith("procedural"):
            part = s.split(":", 1)[1] if ":" in s else None
            ids = range(N_PROCEDURAL) if part is None else [int(x) for x in part.split(",")]
            out += [LabelSource("procedural", str(i)) for i in ids]
        else:
            p = Path(s)
            if p.is_dir():
                files = sorted(f for f in p.iterdir() if f.name.endswith((".nii", ".nii.gz", ".mgz")))
                if not files:
                    raise QSMInputError(str(p), "the folder has no .nii/.nii.gz/.mgz label maps",
                                        "point to a segmentation file or a folder of them")
                out += [LabelSource("file", str(f.resolve())) for f in files]
            elif p.exists():
                out.append(LabelSource("file", str(p.resolve())))
            else:
                raise QSMInputError(f"source {s}", "not a known source nor an existing file",
                                    "use synthseg, procedural, or a path to a label map")
    return out


# ------------------------------------------------------------------------------ procedural head
def _ellipsoid(x, y, z, c, r):
    return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2


def _smooth_noise(rng, shape, low: int, amp: float) -> np.ndarray:
    """Gaussian noise on a ``low``^3 grid, trilinearly upsampled to ``shape``, times ``amp``."""
    import torch
    import torch.nn.functional as F

    n = torch.from_numpy(rng.standard_normal((1, 1, low, low, low)).astype(np.float32))
    return (F.interpolate(n, size=tuple(shape), mode="trilinear", align_corners=True)[0, 0].numpy() * amp)


def procedural_head(variant: int = 0, n: int = 112, voxel_mm: float = 2.0) -> tuple[np.ndarray, tuple]:
    """A whole-head label map (FreeSurfer codes, RAS+) built from ellipsoids and smooth noise.

    Cortex with gyri and sulci (noise-modulated GM/WM boundary, sulcal CSF), ventricles, caudate,
    putamen, pallidum, thalamus, ventral DC, brain stem, cerebellum, outer CSF, skull with marrow,
    scalp with fat, skin, eyes, nasal cavity and sinuses (air, label 0), on an ``n``^3 grid of
    ``voxel_mm`` voxels. Deterministic per ``variant``. Returns (labels int32, voxel size).
    """
    rng = np.random.default_rng(10_000 + int(variant))
    ax = (np.arange(n) - n / 2 + 0.5) * voxel_mm
    x, y, z = np.meshgrid(ax, ax, ax, indexing="ij", sparse=True)   # x: R, y: A, z: S (mm)
    s = rng.uniform(0.9, 1.1, 3)
    lab = np.zeros((n, n, n), np.int32)
    shp = (n, n, n)
    bump = _smooth_noise(rng, shp, 6, 0.04)
    head = _ellipsoid(x, y, z, (0, 0, 5), (78 * s[0], 98 * s[1], 92 * s[2])) + bump
    lab[head < 1] = 511
    lab[_ellipsoid(x, y, z, (0, 0, 5), (76 * s[0], 96 * s[1], 90 * s[2])) + bump < 1] = 507
    fat = (_smooth_noise(rng, shp, 10, 1.0) > 0.8) & (lab == 507)
    lab[fat] = 600
    skull_o = _ellipsoid(x, y, z, (0, 0, 8), (70 * s[0], 90 * s[1], 83 * s[2])) + bump
    lab[skull_o < 1] = 515
    lab[_ellipsoid(x, y, z, (0, 0, 8), (67 * s[0], 87 * s[1], 80 * s[2])) + bump < 1] = 516
    lab[_ellipsoid(x, y, z, (0, 0, 8), (65 * s[0], 85 * s[1], 78 * s[2])) + bump < 1] = 515
    inner = _ellipsoid(x, y, z, (0, 0, 8), (63 * s[0], 83 * s[1], 76 * s[2])) + bump
    lab[inner < 1] = 24
    # cerebrum: a folded cortical mantle. depth = mm below the (bumpy) ellipsoidal surface; a
    # band-limited noise g (~10 mm features) is the gyral pattern: white-matter cores rise into the
    # gyri (high g) up to ~3 mm below the surface, CSF-filled sulci (low g) reach ~15 mm deep and
    # grey matter lines both.
    cer = _ellipsoid(x, y, z, (0, 0, 12), (60 * s[0], 80 * s[1], 66 * s[2])) + bump
    inside = cer < 1
    depth = (1 - np.sqrt(np.clip(cer, 0, None))) * 66.0
    g = _smooth_noise(rng, shp, 22, 1.0)
    g = (g - g[inside].mean()) / (g[inside].std() + 1e-6)
    lab[inside] = 3
    lab[inside & ((g > 1.9 - 0.15 * depth) | (depth > 20))] = 2
    lab[inside & (g < -1.0 - 0.06 * depth) & (depth < 18)] = 24
    lab[(np.abs(x) < 1.2 * voxel_mm) & inside & (z > -5)] = 24   # interhemispheric fissure
    # cerebellum + brain stem
    cb = _ellipsoid(x, y, z, (0, -55 * s[1], -38 * s[2]), (48 * s[0], 26, 22))
    lab[(cb < 1) & (lab != 2)] = 8
    lab[(cb < 0.35)] = 7
    bs = ((x / 11) ** 2 + ((y + 22) / 13) ** 2 < 1) & (z < -5) & (z > -70)
    lab[bs] = 16
    # deep structures (bilateral)
    for sgn, off in ((-1, 0), (1, 39)):
        lab[_ellipsoid(x, y, z, (sgn * 14, 2, 12), (4, 22, 6)) < 1] = 4 + off          # ventricle
        lab[_ellipsoid(x, y, z, (sgn * 12, 18, 14), (5, 9, 7)) < 1] = 11 + off         # caudate
        lab[_ellipsoid(x, y, z, (sgn * 25, 4, 2), (5, 14, 9)) < 1] = 12 + off           # putamen
        lab[_ellipsoid(x, y, z, (sgn * 19, 2, 0), (3, 8, 5)) < 1] = 13 + off            # pallidum
        lab[_ellipsoid(x, y, z, (sgn * 10, -14, 4), (8, 13, 8)) < 1] = 10 + off         # thalamus
        lab[_ellipsoid(x, y, z, (sgn * 10, -10, -10), (5, 7, 4)) < 1] = 28 + 32 * (sgn > 0)  # ventral DC
        lab[_ellipsoid(x, y, z, (sgn * 32, -40, 40), (1.5, 28, 1.5)) < 1] = 30 + 32 * (sgn > 0)  # a vein
        lab[_ellipsoid(x, y, z, (sgn * 32, 85 * s[1], -30), (12, 11, 11)) < 1] = 506    # eye
        lab[_ellipsoid(x, y, z, (sgn * 20, 60 * s[1], -62), (12, 18, 14)) < 1] = 0      # maxillary sinus
    lab[_ellipsoid(x, y, z, (0, 2, 4), (2, 14, 8)) < 1] = 14                               # 3rd ventricle
    lab[_ellipsoid(x, y, z, (0, 82 * s[1], 20), (14, 6, 10)) < 1] = 0                     # frontal sinus
    lab[_ellipsoid(x, y, z, (0, 40, -30), (9, 9, 8)) < 1] = 0                              # sphenoid sinus
    nasal = _ellipsoid(x, y, z, (0, 78 * s[1], -55), (9, 30, 20)) < 1
    lab[nasal] = 509
    lab[nasal & (_ellipsoid(x, y, z, (0, 78 * s[1], -55), (6, 28, 17)) < 1)] = 0           # nasal air
    lab[_ellipsoid(x, y, z, (0, 35, -95), (9, 9, 45)) < 1] = 0                            # pharynx
    return lab, (voxel_mm,) * 3
