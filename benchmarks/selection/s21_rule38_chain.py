"""Session 21, rule 38's evaluation chain (results_nextqsm.md), run from the repository root after
`s21_explore_focal.py` built and calibrated Qf (the focal-loss fine-tuning, snapshots 800-1000): the conditions the
exploration did not read, in the rule's order, stopping at the first failed one: (d-tilt) held-out heads 13-16 at 64^3
with B0 tilted 25 degrees, each XSIM >= 0.60; (s) training maps; (r) the ROI proxy; (d2) the 1 mm conditions."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rule_chain import B36, Chain  # noqa: E402

RUN = Path("/work/runs/s21")


def main():
    c = Chain(38, RUN, RUN / "Qf", "r38", ref=B36)   # Qf exists: built and calibrated by s21_explore_focal.py
    cells = c.tilted()
    c.verdict("d-tilt", all(float(x.split("/")[1]) >= 0.60 for x in cells), f"tilted NRMSE / XSIM {cells}")
    c.training_maps(blur_gain=-0.5, total_tol=0.5)
    c.roi_proxy(tol_mae=0.5, tol_slope=0.01)
    c.heldout_1mm(mean_max=B36["mean_1mm"] + 0.5)
    print("rule 38: every condition holds: ship Qf", flush=True)


if __name__ == "__main__":
    main()
