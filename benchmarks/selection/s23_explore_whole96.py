"""Session 23 exploration after rule 44 (no rule): does a fine-tune on whole heads (configs/cpu_vn_whole96.yaml, 96^3,
the brain fitted into the grid) avoid the loss on the whole-head 1 mm training maps that the 64^3 recipe with 64 mm
crops showed within 100 steps (rules 41, 43, 44; s23_explore_trajectory)? Its last checkpoint is exported
into a copy of the shipped folder without level calibration and scored by `select_vn.py` on training maps 1-4 at 1 mm,
z and tilted, against the shipped VN (demeaned NRMSE comparable; XSIM is not, the level being uncalibrated)."""
import shutil
import subprocess
from pathlib import Path

RUN = Path("/work/runs/s23")
S = Path("NeXtQSM/nextqsm/models/weights")


def main():
    fit = RUN / "cpu_vn_whole96"
    src = fit / "last.pt"   # the run's last step (its snapshots are every 100 steps)
    print("scoring", src, flush=True)
    d = RUN / "W96"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(S, d)
    subprocess.run([".venv/bin/nextqsm-train", "export", "--checkpoint", str(src), "--weights-dir", str(d)], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([".venv/bin/python", "benchmarks/select_vn.py", f"S2={S}", f"W96={d}", "--out",
                    str(RUN / "w96_select.json")], check=True)


if __name__ == "__main__":
    main()
