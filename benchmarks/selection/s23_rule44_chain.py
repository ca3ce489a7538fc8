"""Session 23, rule 44's evaluation chain (results_nextqsm.md), run from the repository root after
`nextqsm-train fit --config NeXtQSMTraining/nextqsm_training/configs/cpu_vn_lowlr.yaml`: L = the mean of the snapshots
at steps 800-1000 exported into a copy of the shipped folder (rule 42's VN, QL75), per-path levels with 1 flip (rule
28's convention), then rule 44's conditions against QL75 (`B42`), stopping at the first failed one. No fallback."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rule_chain import B42, Chain  # noqa: E402

RUN = Path("/work/runs/s23")


def main():
    c = Chain(44, RUN, RUN / "L", "r44", ref=B42)
    c.build_average(RUN / "cpu_vn_lowlr", range(800, 1001, 100), "lowlr_avg.pt")
    c.calibrate()
    # (s) no loss on the 1 mm training maps (the point of the low lr): tilted <= +0.2, blurred <= QL75's, total <= +0.2
    c.training_maps(tilt_tol=0.2, blur_gain=0.0, total_tol=0.2, xsim_tol=0.005)
    c.challenge(tol_default=0.3, vndc_gain=0.3, tol_mae=0.5)   # (c) the aim: VN + consistency step <= 64.6 %
    c.focal(contrast_gain=-0.01, moment_gain=0.0)               # (q)
    c.roi_proxy(tol_mae=0.5, tol_slope=0.01)                    # (r)
    c.heldout(tilt_xsim_mean_min=B42["tilt_xsim_mean"] - 0.005)  # (d)
    c.heldout_1mm(mean_max=B42["mean_1mm"] + 0.3)               # (d2)
    c.demo()                                                    # (f)
    c.noise()                                                   # (e)
    print("rule 44: every condition holds: ship L", flush=True)


if __name__ == "__main__":
    main()
