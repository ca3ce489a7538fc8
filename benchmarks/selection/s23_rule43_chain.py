"""Session 23, rule 43's evaluation chain (results_nextqsm.md), run from the repository root after
`nextqsm-train fit --config NeXtQSMTraining/nextqsm_training/configs/cpu_vn_tilt35.yaml`: T = the mean of the
snapshots at steps 800-1000 exported into a copy of the shipped folder (rule 42's VN, QL75), per-path levels with 1
flip (rule 28's convention), then rule 43's conditions against QL75 (`B42`), stopping at the first failed one. If T
fails (s) or (d), the rule's fallback Tb = 0.5 QL75 + 0.5 T (weight blend, levels recalibrated) runs the same
conditions; a failure of any other condition stops the rule."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rule_chain import B42, Chain, candidate_then_blend  # noqa: E402

RUN = Path("/work/runs/s23")


def conditions(c: Chain) -> None:
    # (s) the aim, part 1: tilted 1 mm training maps 0.3 points better, no XSIM loss tilted, little along z
    c.training_maps(tilt_tol=-0.3, blur_gain=-0.5, total_tol=0.3, xsim_tol=0.005, xsim_tilt_tol=0.0)
    # (d) the aim, part 2: rule 32's held-out conditions, and the tilted heads' mean XSIM not below QL75's
    c.heldout(tilt_xsim_mean_min=B42["tilt_xsim_mean"])
    c.challenge(tol_default=0.3, vndc_gain=-0.5, tol_mae=0.5)   # (c) keep rule 42's gains
    c.focal(contrast_gain=-0.02, moment_gain=-0.03)              # (q)
    c.roi_proxy(tol_mae=0.5, tol_slope=0.01)                     # (r)
    c.heldout_1mm(mean_max=B42["mean_1mm"] + 0.3)                # (d2)
    c.demo()                                                     # (f)
    c.noise()                                                    # (e)


def main():
    candidate_then_blend(43, RUN, B42, "T", "r43",
                         lambda c: c.build_average(RUN / "cpu_vn_tilt35", range(800, 1001, 100), "tilt35_avg.pt"),
                         conditions, fallback_if=lambda failed: failed in ("s", "d"), shipped="QL75")


if __name__ == "__main__":
    main()
