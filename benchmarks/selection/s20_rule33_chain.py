"""Session 20, rule 33's evaluation chain (results_nextqsm.md), run from the repository root after
`nextqsm-train fit --config NeXtQSMTraining/nextqsm_training/configs/cpu_vn_pv7.yaml`: average the snapshots at steps
600-800, export into a copy of the shipped folder, calibrate the per-path levels with 1 flip (rule 28's convention),
then the conditions in the rule's order, stopping at the first failed one: (r) the ROI proxy on training maps, (c) the
challenge (whole-mask and deep grey ROI means), (d), (f), (e), (a)-(b) as rule 32 (`rule_chain.py`)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rule_chain import Chain  # noqa: E402

RUN = Path("/work/runs/s20")


def main():
    c = Chain(33, RUN, RUN / "Q", "r33")
    c.build_average(RUN / "cpu_vn_pv7", (600, 650, 700, 750, 800), "pv7_avg.pt")
    c.calibrate()
    c.roi_proxy()
    c.challenge()
    c.heldout()
    c.demo()
    c.noise()
    c.training_maps(split_ab=True)
    print("rule 33: every condition holds: ship Q", flush=True)


if __name__ == "__main__":
    main()
