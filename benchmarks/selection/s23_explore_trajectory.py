"""Session 23 exploration (no rule): when does a CPU fine-tune from the shipped VN lose the 1 mm training maps?
Rule 43's run (configs/cpu_vn_tilt35.yaml) lost 1.1 points tilted after 1000 steps; rule 41's lost 1.0. Each single
snapshot of that run (steps 100, 400, 700, 1000; no averaging, no level calibration: NRMSE is demeaned) is exported into
a copy of the shipped folder and scored with `select_vn.py --no-blur` on training maps 1-4 at 1 mm, z and tilted.
Early loss = the recipe's first steps (warm-up, learning rate) move the weights off the shipped basin; late loss = drift."""
import shutil
import subprocess
import sys
from pathlib import Path

RUN = Path("/work/runs/s23")
S = Path("NeXtQSM/nextqsm/models/weights")


def main():
    args = []
    for step in (100, 400, 700, 1000):
        d = RUN / f"traj_{step}"
        if d.exists():
            shutil.rmtree(d)
        shutil.copytree(S, d)
        subprocess.run([".venv/bin/nextqsm-train", "export", "--checkpoint",
                        str(RUN / "cpu_vn_tilt35" / "snapshots" / f"step_{step:07d}.pt"), "--weights-dir", str(d)],
                       check=True, stdout=subprocess.DEVNULL)
        args.append(f"s{step}={d}")
    subprocess.run([".venv/bin/python", "benchmarks/select_vn.py", *args, "--out",
                    str(RUN / "traj_select.json")], check=True)


if __name__ == "__main__":
    sys.exit(main())
