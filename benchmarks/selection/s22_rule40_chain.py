"""Session 22, rule 40's evaluation chain (results_nextqsm.md), run from the repository root after
`nextqsm-train fit --config NeXtQSMTraining/nextqsm_training/configs/cpu_vn_focal_lbv.yaml`: QL = the mean of the
snapshots at steps 800-1000 exported into a copy of the shipped folder, per-path levels with 1 flip (rule 28's
convention), then rule 40's conditions against the shipped VN B (`B36`), stopping at the first failed one. If QL fails
any condition, the rule's fallback QLb = 0.5 B + 0.5 QL (weight blend, levels recalibrated) runs the same conditions."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rule_chain import B36, Chain, candidate_then_blend  # noqa: E402

RUN = Path("/work/runs/s22")


def conditions(c: Chain) -> None:
    c.training_maps(blur_gain=-0.5, total_tol=0.5)            # (s): rule 39's failed condition first
    c.challenge(tol_default=0.3, vndc_gain=0.0, tol_mae=0.5)  # (c)
    c.roi_proxy(tol_mae=0.5, tol_slope=0.01)                  # (r)
    c.heldout()                                               # (d)
    c.heldout_1mm(mean_max=B36["mean_1mm"] + 0.5)             # (d2)
    c.demo()                                                  # (f)
    c.noise()                                                 # (e)
    c.focal(contrast_gain=0.02, moment_gain=0.03)             # (q): the aim


def main():
    candidate_then_blend(40, RUN, B36, "QL", "r40",
                         lambda c: c.build_average(RUN / "cpu_vn_focal_lbv", range(800, 1001, 100), "focal_lbv_avg.pt"),
                         conditions)


if __name__ == "__main__":
    main()
