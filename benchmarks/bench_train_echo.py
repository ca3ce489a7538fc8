"""Training throughput with data echoing (``train.echo``) and CPU bfloat16 (``train.amp_cpu``): seconds per step.

Runs ``--steps`` steps of ``--config`` (VN-only fine-tuning from the shipped weights by default) once per
``--echo`` x ``--amp-cpu`` value in this process, on this machine's device, and reports the mean ``sec_per_step`` of the
logged rows after the first (the first includes start-up). With echo E, only every E-th step waits for
the generator, so on a run bound by data generation the step time approaches that of the networks::

    python benchmarks/bench_train_echo.py --out benchmarks/results_train_echo.md
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "NeXtQSM"), str(REPO / "NeXtQSMTraining")]
CONFIGS = REPO / "NeXtQSMTraining" / "nextqsm_training" / "configs"


def one_run(config: str, steps: int, echo: int, log_every: int, workers: int | None, amp_cpu: bool = False) -> dict:
    from nextqsm_training.config import load_config
    from nextqsm_training.train import fit

    cfg = load_config(CONFIGS / config if not Path(config).exists() else config)
    with tempfile.TemporaryDirectory() as d:
        cfg.out_dir = d
        t = cfg.train
        t.phase1_steps, t.phase2_steps, t.echo, t.amp_cpu = steps, 0, echo, bool(amp_cpu)
        t.log_every, t.val_every, t.ckpt_every, t.snapshot_every, t.max_minutes = log_every, 10 ** 9, 10 ** 9, 0, None
        t.init_from = str(REPO / "NeXtQSM" / "nextqsm" / "models" / "weights")
        if workers is not None:
            t.workers = workers
        cfg.data.n_val = 1
        t0 = time.perf_counter()
        res = fit(cfg)
        wall = time.perf_counter() - t0
        rows = list(csv.DictReader(open(Path(d) / "train.csv")))
    per = [float(r["sec_per_step"]) for r in rows[1:]]
    return {"echo": echo, "steps": res["step"], "wall_s": round(wall, 1),
            "sec_per_step": round(sum(per) / len(per), 3) if per else None, "device": t.device,
            "batch": t.batch_size, "workers": t.workers, "amp_cpu": bool(amp_cpu)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="cpu_vn_mean.yaml")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--log-every", type=int, default=4)
    ap.add_argument("--echo", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--workers", type=int, default=None, help="override the config's train.workers")
    ap.add_argument("--amp-cpu", type=int, nargs="+", default=[0], help="train.amp_cpu values (0 / 1) to run")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    rows = [one_run(a.config, a.steps, e, a.log_every, a.workers, bool(b)) for b in a.amp_cpu for e in a.echo]
    for r in rows:
        print(r, flush=True)
    if a.out:
        import torch

        lines = ["# Training throughput: data echoing (`train.echo`) and CPU bfloat16 autocast (`train.amp_cpu`)", "",
                 f"Command: `python benchmarks/bench_train_echo.py {' '.join(argv if argv is not None else sys.argv[1:])}`  ",
                 f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {platform.processor() or platform.machine()}, "
                 f"{os.cpu_count()} CPUs, torch {torch.__version__}, CUDA {'yes' if torch.cuda.is_available() else 'no'}; "
                 f"config `{a.config}` (VN-only from the shipped weights), mean `sec_per_step` of the logged rows after the first.",
                 "", "| echo | amp_cpu | steps | batch | workers | s/step | wall s |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['echo']} | {int(r['amp_cpu'])} | {r['steps']} | {r['batch']} | {r['workers']} | {r['sec_per_step']} | "
                  f"{r['wall_s']} |" for r in rows]
        out = Path(a.out)
        from nextqsm.io import write_text_atomic

        write_text_atomic(out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
