"""Session 22, rule 41's evaluation chain (results_nextqsm.md), run from the repository root after
`nextqsm-train fit --config NeXtQSMTraining/nextqsm_training/configs/cpu_vn_focal_lbv2.yaml`: Q2 = the mean of the
snapshots at steps 800-1000 exported into a copy of the shipped folder (rule 40's VN, QLb), per-path levels with 1 flip
(rule 28's convention), then rule 41's conditions against QLb (`B40`), stopping at the first failed one. If Q2 fails
(s), the rule's fallback Q2b = 0.5 QLb + 0.5 Q2 (weight blend, levels recalibrated) runs the same conditions; a
failure of any other condition stops the rule."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rule_chain import B40, Chain, candidate_then_blend  # noqa: E402

RUN = Path("/work/runs/s22")


def conditions(c: Chain) -> None:
    c.training_maps(blur_gain=-0.5, total_tol=0.5)            # (s): S2 = the shipped QLb, re-measured in the call
    c.challenge(tol_default=0.3, vndc_gain=0.5, tol_mae=0.5)  # (c): the aim, part 1
    c.focal(contrast_gain=0.0, moment_gain=0.02)              # (q): the aim, part 2
    c.roi_proxy(tol_mae=0.5, tol_slope=0.01)                  # (r)
    c.heldout()                                               # (d)
    c.heldout_1mm(mean_max=B40["mean_1mm"] + 0.5)             # (d2)
    c.demo()                                                  # (f)
    c.noise()                                                 # (e)


def main():
    candidate_then_blend(41, RUN, B40, "Q2", "r41",
                         lambda c: c.build_average(RUN / "cpu_vn_focal_lbv2", range(800, 1001, 100), "focal_lbv2_avg.pt"),
                         conditions, fallback_if=lambda failed: failed == "s", shipped="QLb")


if __name__ == "__main__":
    main()
