"""Session 20, rule 35's evaluation chain (results_nextqsm.md), run from the repository root after
`nextqsm-train fit --config NeXtQSMTraining/nextqsm_training/configs/cpu_vn_pv8.yaml`: average the snapshots at steps
300-400, export into a copy of the shipped folder, calibrate the per-path levels with 1 flip (rule 28's convention),
then (s) the training maps, (r) the ROI proxy, (c) the challenge, (d) the 64^3 held-out heads, (d2) the 1 mm held-out
conditions, (f) the demo, (e) the noise rise, stopping at the first failed condition (`rule_chain.py`)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rule_chain import Chain  # noqa: E402

RUN = Path("/work/runs/s20")


def main():
    c = Chain(35, RUN, RUN / "Q8", "r35")
    c.build_average(RUN / "cpu_vn_pv8", (300, 325, 350, 375, 400), "pv8_avg.pt")
    c.calibrate()
    c.rule35_conditions()
    print("rule 35: every condition holds: ship Q8", flush=True)


if __name__ == "__main__":
    main()
