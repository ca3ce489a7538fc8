"""One bounded session on a lent GPU: CUDA tests, GPU benchmark, then a training chunk sized to
the time left. Everything it brings back goes to ``$OUT`` (at most 8 files of <= 15 MiB).

Run on the device machine from the repository root (its python3 has torch; nibabel travels as a
wheel, the SynthSeg training maps as ``.devdata/synthseg``)::

    python3 scripts/gpu_lease.py --budget 540

Stages (each logged with its wall time to ``$OUT/log.txt``; a failing stage does not stop the others):
1. label maps prepared in parallel (disk cache, so the DataLoader workers load them in ms); with no SynthSeg maps
   found it refuses to train (rc 2) unless ``--allow-procedural`` (or ``--dry-run``);
2. ``pytest -m gpu Testing/test_gpu.py``;
3. ``benchmarks/bench_gpu.py`` with the shipped weights (``$OUT/results_gpu.json``);
4. a calibration of ``configs/gpu_lease.yaml``: seconds per step, measured after the DataLoader's
   prefetch queue (``4 * workers`` batches) has drained, so slow data generation is counted;
5. phase 1 then phase 2 with step counts that end inside ``--budget`` (cosine schedule over them);
   the end of each phase (or with ``--average K`` the mean of its last K weight snapshots) is packed as
   ``p1.pt`` / ``p2.pt`` model-only checkpoints split into
   15 MiB chunks (``cat p1.pt.* > p1.pt`` joins them; ``p2``'s baseline background U-Net is ``p1``'s);
6. the training logs as ``$OUT/runlogs.tar.gz``.

``--dry-run`` does the same on the CPU with a tiny budget and model (to test this script).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tarfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "NeXtQSM"), str(REPO / "NeXtQSMTraining")]
T0 = time.time()
OUT = Path(os.environ.get("OUT") or "/tmp/gpu_lease_out")
CHUNK = 15 * 2 ** 20


def log(msg: str) -> None:
    line = f"[{time.time() - T0:6.1f} s] {msg}"
    print(line, flush=True)
    with open(OUT / "log.txt", "a") as fh:
        fh.write(line + "\n")


def stage(name: str):
    def deco(fn):
        def wrapped(*a, **k):
            t = time.time()
            log(f"== {name}")
            try:
                r = fn(*a, **k)
                log(f"== {name}: done in {time.time() - t:.1f} s")
                return r
            except Exception:  # noqa: BLE001 - keep going with the next stage
                log(f"== {name}: FAILED after {time.time() - t:.1f} s\n{traceback.format_exc()}")
                return None
        return wrapped
    return deco


def sh(cmd: list[str], timeout: float) -> int:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path[:2] + [os.environ.get("PYTHONPATH", "")])})
    log(f"$ {' '.join(cmd)} -> rc {p.returncode}\n{p.stdout[-4000:]}\n{p.stderr[-3000:]}")
    return p.returncode


def _prep_map(i: int) -> str:
    from nextqsm_training.label_sources import _cached_volume

    return _cached_volume("synthseg", str(i), 1).name


@stage("label maps")
def prepare_labels() -> None:
    from multiprocessing import Pool

    from nextqsm_training.label_sources import TRAIN_MAPS, synthseg_available

    maps = [i for i in TRAIN_MAPS if synthseg_available(i)]
    if not maps:
        log("no SynthSeg maps here: the generator falls back to procedural heads")
        return
    with Pool(min(len(maps), os.cpu_count() or 1)) as pool:
        log(f"prepared {pool.map(_prep_map, maps)}")


@stage("GPU tests")
def gpu_tests() -> None:
    sh([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "Testing/test_gpu.py"], 180)


@stage("GPU benchmark (shipped weights)")
def gpu_bench(extra: list[str], out_name: str) -> None:
    sh([sys.executable, "benchmarks/bench_gpu.py", "--out", f"/tmp/{out_name}.md", *extra], 240)
    p = Path(f"/tmp/{out_name}.json")
    if p.exists():
        (OUT / f"{out_name}.json").write_text(p.read_text())


def pack(ckpt: Path, name: str, drop_base_bfr: bool) -> None:
    """Model-only copy of a fit checkpoint, split into CHUNK-byte files ``$OUT/name.pt.NN``."""
    import torch

    st = torch.load(ckpt, map_location="cpu", weights_only=False)
    slim = {"step": st["step"], "config": st["config"], "model": st["model"],
            "metrics": st.get("metrics") or st.get("best") or {},
            "base_bfr": None if drop_base_bfr else st.get("base_bfr")}
    tmp = Path("/tmp") / f"{name}.pt"
    torch.save(slim, tmp)
    data = tmp.read_bytes()
    for n, i in enumerate(range(0, len(data), CHUNK)):
        (OUT / f"{name}.pt.{n:02d}").write_bytes(data[i:i + CHUNK])
    log(f"packed {ckpt} (step {st['step']}) -> {name}.pt ({len(data) / 2 ** 20:.1f} MiB)")


def sec_per_step(run_dir: Path, skip: int = 10) -> float:
    """Median seconds per step over the logged intervals after step ``skip``."""
    rows = list(csv.DictReader(open(run_dir / "train.csv")))
    vals = [float(r["sec_per_step"]) for r in rows if int(r["step"]) > skip]
    return sorted(vals)[len(vals) // 2]


def phase_end(run_dir: Path, k: int, after: int) -> Path:
    """What to pack at the end of a phase: ``last.pt``, or with ``k`` > 1 the uniform average of the
    phase's last ``k`` snapshots (steps > ``after``; ``nextqsm_training.train.average_checkpoints``)."""
    from nextqsm_training.train import average_checkpoints

    snaps = sorted((run_dir / "snapshots").glob("step_*.pt"))
    snaps = [s for s in snaps if int(s.stem.split("_")[1]) > after][-k:] if k > 1 else []
    if len(snaps) < 2:
        return run_dir / "last.pt"
    out = run_dir / f"average_after_{after}.pt"
    log(f"averaging {[s.name for s in snaps]} -> {out.name}: {average_checkpoints(snaps, out)}")
    return out


@stage("training")
def train(args) -> None:
    import torch

    from nextqsm_training.config import load_config
    from nextqsm_training.train import fit

    def config(out: str):
        cfg = load_config(REPO / "NeXtQSMTraining/nextqsm_training/configs" / args.config)
        cfg.out_dir = out
        if args.echo:
            cfg.train.echo = args.echo
        if args.dry_run:
            cfg.data.size, cfg.train.batch_size, cfg.train.workers, cfg.train.device = 24, 1, 2, "cpu"
            cfg.data.n_val = 1
            for k in ("bfr", "baseline_inv"):
                cfg.model.__dict__[k] = {"base": 2, "depth": 2, "convs": 1, "norm": "none"}
            cfg.model.vn["unet"] = {"base": 2, "depth": 2, "convs": 1, "norm": "none"}
        return cfg

    if args.sec_per_step:
        sps = args.sec_per_step
    else:
        cal = config("/tmp/runs/calibrate")
        cal.train.log_every, cal.train.val_every, cal.train.ckpt_every = 5, 10 ** 9, 10 ** 9
        # The first PREFETCH_FACTOR * workers steps come from batches the workers made while the model
        # started: timing only those measured 0.073 s/step where the run then went at 0.21 (H200,
        # 14 workers, V-SHARP inputs). Time the steps after the queue has drained.
        from nextqsm_training.train import PREFETCH_FACTOR

        queued = PREFETCH_FACTOR * max(cal.train.workers, 0) + 10
        n_cal = queued + 25
        try:
            fit(cal, max_steps=n_cal)
        except Exception:  # noqa: BLE001 - e.g. an op without bf16 support: train in float32 instead
            log(f"calibration with amp={cal.train.amp} failed, retrying in float32:\n{traceback.format_exc()}")
            args.amp = False
            cal.out_dir = "/tmp/runs/calibrate_fp32"
            cal.train.amp = False
            fit(cal, max_steps=n_cal)
        sps = sec_per_step(Path(cal.out_dir), skip=queued)
    left = args.budget - (time.time() - T0) - args.reserve
    n = max(int(left / sps), 20)
    cfg = config(args.out_dir)
    cfg.train.amp = cfg.train.amp and args.amp
    if args.init_from:
        cfg.train.init_from = str(Path(args.init_from).resolve())
    if args.lr:
        cfg.train.lr = args.lr
    p1 = int(round(n * args.phase1_frac))
    cfg.train.phase1_steps, cfg.train.phase2_steps = p1, n - p1
    cfg.train.warmup_steps = min(cfg.train.warmup_steps, max(n // 10, 1))
    cfg.train.val_every = args.val_every or max(n // 8, 10)
    if args.average > 1:   # snapshots for averaging the end of each phase (2 per averaged span)
        cfg.train.snapshot_every = max(n // (4 * args.average), 1)
    # phase 1 may use only its share of the time: with a step time estimated too low (session 13: 0.45 s planned,
    # 0.91 s measured) it would otherwise take all of it and leave phase 2 (end to end) a single step
    cfg.train.max_minutes = left * (args.phase1_frac if n - p1 > 0 else 1.0) / 60.0
    log(f"{sps:.3f} s/step on {'cuda' if torch.cuda.is_available() else 'cpu'}; "
        f"{left:.0f} s left for training -> phase 1 {p1} + phase 2 {n - p1} steps; init_from {cfg.train.init_from}")
    r1 = fit(cfg, max_steps=p1)
    log(f"phase 1: {json.dumps(r1, default=str)[:2000]}")
    try:
        log(f"measured {sec_per_step(Path(cfg.out_dir)):.3f} s/step in phase 1 (planned {sps:.3f})")
    except (OSError, KeyError, IndexError, ValueError):
        pass
    pack(phase_end(Path(cfg.out_dir), args.average, 0), "p1", drop_base_bfr=True)
    if n - p1 > 0:
        cfg.train.max_minutes = max(args.budget - (time.time() - T0) - 25, 10) / 60.0
        r2 = fit(cfg, resume=True)
        log(f"phase 2: {json.dumps(r2, default=str)[:2000]}")
        pack(phase_end(Path(cfg.out_dir), args.average, p1), "p2", drop_base_bfr=True)


def save_logs(run_dir: Path) -> None:
    with tarfile.open(OUT / "runlogs.tar.gz", "w:gz") as tf:
        for name in ("train.csv", "val.csv", "config.yaml"):
            if (run_dir / name).exists():
                tf.add(run_dir / name, arcname=name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=540.0, help="seconds from start to the end of training")
    ap.add_argument("--reserve", type=float, default=45.0, help="seconds kept for restarts, validation and packing")
    ap.add_argument("--config", default="gpu_lease.yaml")
    ap.add_argument("--phase1-frac", type=float, default=0.75)
    ap.add_argument("--out-dir", default="/tmp/runs/gpu_lease")
    ap.add_argument("--skip", nargs="*", default=[], choices=["tests", "bench"])
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--no-amp", dest="amp", action="store_false")
    ap.add_argument("--sec-per-step", type=float, default=None, help="skip the calibration: use this step time")
    ap.add_argument("--init-from", default=None, help="checkpoint (model weights) to start from; fresh schedule")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the config's)")
    ap.add_argument("--average", type=int, default=1,
                    help="pack the uniform average of each phase's last K weight snapshots instead of its last step")
    ap.add_argument("--val-every", type=int, default=None, help="validation interval in steps (default: 1/8 of the run)")
    ap.add_argument("--bench-weights", default=None, help="checkpoint to export and benchmark on the GPU too")
    ap.add_argument("--echo", type=int, default=None,
                    help="data echoing (train.echo): each generated batch feeds N steps, re-augmented; for data-bound runs")
    ap.add_argument("--allow-procedural", action="store_true",
                    help="train even when no SynthSeg training maps are found (the generator then uses procedural "
                         "heads, which cost the session-15 VN 12 NRMSE points on SynthSeg heads)")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NEXTQSM_LABEL_CACHE", "/tmp/nextqsm_labels")
    if (REPO / ".devdata" / "synthseg").exists():
        os.environ.setdefault("NEXTQSM_SYNTHSEG_DIR", str(REPO / ".devdata" / "synthseg"))
    import importlib

    import nextqsm_training.label_sources as ls

    importlib.reload(ls)   # pick up NEXTQSM_SYNTHSEG_DIR
    log(f"python {sys.version.split()[0]}; synthseg dir {ls.SYNTHSEG_DIR}; OUT {OUT}")
    refuse = not (args.dry_run or args.allow_procedural or any(ls.synthseg_available(i) for i in ls.TRAIN_MAPS))
    if refuse:
        log(f"REFUSING TO TRAIN: no SynthSeg training maps in {ls.SYNTHSEG_DIR}; carry .devdata/synthseg "
            "(maps 01-12 and labels.csv) with the call, or pass --allow-procedural")
        if {"tests", "bench"} <= set(args.skip):
            return 2
    sh(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"], 30) if not args.dry_run else None
    prepare_labels()
    if "tests" not in args.skip:
        gpu_tests()
    if "bench" not in args.skip and not args.dry_run:
        extra = ["--repeats", "1"]
        if args.bench_weights:
            sh([sys.executable, "-m", "nextqsm_training.cli", "export", "--checkpoint", args.bench_weights,
                "--weights-dir", "/tmp/w_bench"], 60)
            extra += ["--weights-dir", "/tmp/w_bench", "--bfr", "unet"]
        gpu_bench(extra, "results_gpu")
    if refuse:
        return 2
    try:
        train(args)
    finally:
        save_logs(Path(args.out_dir))
        log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
