"""Session 22 exploration (no rule): QL75 = 0.5 x the shipped VN (rule 40's QLb) + 0.5 x candidates/vn_focal_lbv, i.e.
0.25 x rule 36's VN + 0.75 x vn_focal_lbv, read with rule 41's (s), (c) and (q) against QLb (`B40`), each read even
if another fails, to inform the next session's rule."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rule_chain import B40, Chain  # noqa: E402

RUN = Path("/work/runs/s22")


def main():
    c = Chain(0, RUN, RUN / "QL75", "x75", ref=B40)
    c.build_blend(Path("NeXtQSMTraining/nextqsm_training/candidates/vn_focal_lbv"), 0.5)
    c.calibrate()
    for read in (lambda: c.training_maps(blur_gain=-0.5, total_tol=0.5),
                 lambda: c.challenge(tol_default=0.3, vndc_gain=0.5, tol_mae=0.5),
                 lambda: c.focal(contrast_gain=0.0, moment_gain=0.02)):
        try:
            read()
        except SystemExit:
            pass


if __name__ == "__main__":
    main()
