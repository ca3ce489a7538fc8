"""Session 22, rule 39's evaluation chain (results_nextqsm.md), run from the repository root: Bf = 0.5 x the shipped
VN B + 0.5 x candidates/vn_focal, the folder session 21's exploration built and calibrated (`s21_explore_blend.py`,
/work/runs/s21/Bf, nextqsm-vn sha256 db3c298c...), against B's rule-36 readings (`B36`), in rule 37's order and
tolerances except that the challenge's VN + consistency step needs no gain (<= B's 67.0): (c), (s), (r), (d), (d2),
(f), (e), stopping at the first failed one."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rule_chain import B36, Chain  # noqa: E402

RUN = Path("/work/runs/s22")
BF = Path("/work/runs/s21/Bf")


def main():
    c = Chain(39, RUN, BF, "r39", ref=B36)
    c.challenge(tol_default=0.3, vndc_gain=0.0, tol_mae=0.5)
    c.training_maps(blur_gain=-0.5, total_tol=0.5)
    c.roi_proxy(tol_mae=0.5, tol_slope=0.01)
    c.heldout()
    c.heldout_1mm(mean_max=B36["mean_1mm"] + 0.5)
    c.demo()
    c.noise()
    print("rule 39: every condition holds: ship Bf", flush=True)


if __name__ == "__main__":
    main()
