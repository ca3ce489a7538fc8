"""NIfTI input/output with nibabel: geometry kept, BIDS sidecars read, outputs written atomically."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import QSMInputError
from .geometry import check_voxel_size


@dataclass
class Volume:
    """A loaded image: ``data`` float32 (i, j, k[, echo]), its 4x4 ``affine`` and nibabel ``header``."""

    data: np.ndarray
    affine: np.ndarray
    header: Any = None
    path: str | None = None
    sidecar: dict = field(default_factory=dict)

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """Voxel size in mm from the header's pixdim (falls back to the affine)."""
        if self.header is not None:
            zooms = self.header.get_zooms()[:3]
            return check_voxel_size(zooms, self.path or "image")
        return check_voxel_size(np.linalg.norm(np.asarray(self.affine)[:3, :3], axis=0), self.path or "image")


def sidecar_path(path: str | os.PathLike) -> Path:
    """The BIDS JSON sidecar next to a NIfTI file (``x.nii.gz`` -> ``x.json``)."""
    p = Path(path)
    name = p.name
    for ext in (".nii.gz", ".nii", ".mgz"):
        if name.endswith(ext):
            return p.with_name(name[: -len(ext)] + ".json")
    return p.with_suffix(".json")


def read_sidecar(path: str | os.PathLike) -> dict:
    """BIDS sidecar as a dict ({} when absent). EchoTime is in s, MagneticFieldStrength in T."""
    sp = sidecar_path(path)
    if not sp.exists():
        return {}
    try:
        return json.loads(sp.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise QSMInputError(str(sp), f"the JSON sidecar cannot be parsed ({exc})",
                            "fix or remove the sidecar file") from exc


def load_nifti(path: str | os.PathLike, ndim: int | None = 3, name: str | None = None) -> Volume:
    """Load a NIfTI (or MGZ) file as float32 with its affine, header and sidecar.

    ``ndim=3`` requires a 3D volume (a trailing singleton 4th axis is dropped),
    ``ndim=4`` accepts 3D (made 4D with one echo) and 4D, ``None`` accepts either.
    """
    import nibabel as nib

    label = name or str(path)
    if not Path(path).exists():
        raise QSMInputError(label, f"file not found: {path}", "check the path")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise QSMInputError(label, f"cannot read the image ({type(exc).__name__}: {exc})",
                            "pass a valid NIfTI (.nii/.nii.gz) or MGZ file") from exc
    if data.ndim == 4 and data.shape[3] == 1 and ndim == 3:
        data = data[..., 0]
    if ndim == 3 and data.ndim != 3:
        raise QSMInputError(label, f"expected a 3D volume, got shape {data.shape} ({data.ndim}D)",
                            "pass one 3D volume (for multi-echo data use `nextqsm pipeline`, or select one echo)")
    if ndim == 4:
        if data.ndim == 3:
            data = data[..., None]
        if data.ndim != 4:
            raise QSMInputError(label, f"expected a 3D or 4D volume, got shape {data.shape}",
                                "pass a 4D multi-echo NIfTI (echoes on the 4th axis) or one file per echo")
    if data.ndim < 3:
        raise QSMInputError(label, f"expected a 3D volume, got shape {data.shape}", "pass a 3D NIfTI volume")
    vol = Volume(data=data, affine=np.asarray(img.affine, dtype=np.float64), header=img.header.copy(),
                 path=str(path), sidecar=read_sidecar(path))
    check_voxel_size(_raw_pixdim(path, img), label)
    return vol


def _raw_pixdim(path, img) -> tuple[float, ...]:
    """pixdim[1:4] as stored in the file (nibabel silently replaces zeros by 1 on load)."""
    import gzip

    import nibabel as nib

    if isinstance(img, nib.Nifti1Image):
        opener = gzip.open if str(path).endswith(".gz") else open
        try:
            with opener(str(path), "rb") as fh:
                hdr = type(img.header).from_fileobj(fh, check=False)
            return tuple(float(v) for v in hdr["pixdim"][1:4])
        except Exception:  # fall back to the checked header
            pass
    return tuple(float(v) for v in img.header.get_zooms()[:3])


def _umask() -> int:
    """The process's umask, read without changing it where the OS says it (Linux), else by setting it back."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: Path, directory: bool = False) -> None:
    if directory and os.name != "posix":
        return                      # Windows cannot open a folder for fsync; the rename is still atomic
    try:
        fd = os.open(path, os.O_RDONLY if directory else os.O_RDWR)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass                        # e.g. a filesystem without fsync on folders
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", durable: bool = True) -> Iterator[Path]:
    """Yield a new temporary file next to ``path`` for any writer to fill (nibabel, numpy, torch, a figure).

    When the block ends without error the file gets the permissions a plain ``open(path, "w")`` would give
    (the existing file's, else 0o666 minus the umask: ``mkstemp``'s private 0o600 would hide outputs from
    colleagues), is flushed to disk (``durable``: checkpoints and results survive a power cut; caches
    pass False) and renamed onto ``path`` in one step. On any error the temporary file is removed and
    ``path`` is left as it was. ``suffix``: how the temporary name ends, for writers that choose the
    format by it (".nii.gz", ".npz", ".png").
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        try:
            mode = path.stat().st_mode & 0o777
        except OSError:
            mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
        if durable:
            _fsync(path.parent, directory=True)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _nifti_suffix(path: Path) -> str:
    return ".nii.gz" if path.name.endswith(".nii.gz") else (path.suffix or ".nii.gz")


def save_nifti(data: np.ndarray, affine: np.ndarray, path: str | os.PathLike, header: Any = None,
               dtype=np.float32, description: str | None = None) -> Path:
    """Write ``data`` with ``affine`` (and a copy of ``header``) atomically: temp file in the same folder, then rename."""
    import nibabel as nib

    path = Path(path)
    arr = np.asarray(data).astype(dtype, copy=False)
    hdr = header.copy() if header is not None else None
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64), header=hdr)
    img.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm", "sec")
    if hdr is not None and arr.ndim == 3:
        img.header.set_data_shape(arr.shape)
    img.header["scl_slope"] = np.nan
    img.header["scl_inter"] = np.nan
    if description:
        img.header["descrip"] = description[:79].encode()
    with atomic_path(path, suffix=_nifti_suffix(path)) as tmp:
        nib.save(img, str(tmp))
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically (:func:`atomic_path`)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def with_suffix_tag(path: str | os.PathLike, tag: str) -> Path:
    """``out.nii.gz`` + ``_localfield`` -> ``out_localfield.nii.gz``."""
    p = Path(path)
    ext = _nifti_suffix(p) if p.name.endswith((".nii", ".nii.gz")) else p.suffix
    stem = p.name[: -len(ext)] if ext else p.name
    return p.with_name(stem + tag + ext)
