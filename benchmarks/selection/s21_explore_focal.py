"""Session 21 exploration (no rule): the focal-loss fine-tuning `configs/cpu_vn_focal.yaml`, read without a ship
decision. Qf = the mean of its snapshots at steps 800-1000 exported into a copy of the shipped folder, levels by rule
28's convention (`rule_chain.Chain`), then every reading (none stops the others): the calcification benchmark
(diag_focal.py), the demo phantom (guard_demo.py, 3 seeds), the challenge (diag_challenge.py) and the held-out heads
along z with the noise draws (guard_level.py). Shipping it would need a rule written before its measurements."""
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rule_chain import B36, PY, Chain  # noqa: E402

RUN = Path("/work/runs/s21")


def main():
    c = Chain(0, RUN, RUN / "Qf", "xf", ref=B36)
    c.build_average(RUN / "cpu_vn_focal", range(800, 1001, 100), "focal_avg.pt")
    c.calibrate()
    out = c.sh(f"{PY} benchmarks/diag_focal.py --weights-dir {c.q} --nextqsm-variants --out {c.out('focal.md')}",
               "xf_focal.log")
    print([l for l in out.splitlines() if l.startswith("| nextqsm |")][-1], flush=True)
    d = c.sh(f"{PY} benchmarks/guard_demo.py Q={c.q}", "xf_demo.log")
    print(re.search(r"Q: mean NRMSE ([\d.]+), XSIM ([\d.]+)", d).group(0), flush=True)
    c.sh(f"{PY} benchmarks/diag_challenge.py --weights-dir {c.q} --out {c.out('chal.md')}", "xf_chal.log")
    print([l for l in c.out("chal.md").read_text().splitlines() if l.startswith("| measured local field |")
           and "/" in l][0], flush=True)
    clean, noisy = c.guards()
    print("held-out z", [(f"{n:.2f}", f"{x:.4f}") for n, x in clean], "noisy", [f"{n:.2f}" for n in noisy[:4]],
          flush=True)

if __name__ == "__main__":
    main()
