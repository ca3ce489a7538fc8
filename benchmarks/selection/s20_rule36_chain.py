"""Session 20, rule 36's evaluation chain (results_nextqsm.md), run from the repository root: B = `nextqsm-train blend`
of the shipped VN (0.25) and candidates/vn_pv8 (0.75), per-path levels calibrated with 1 flip (rule 28's convention),
then rule 35's conditions in its order, stopping at the first failed one (`rule_chain.py`)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rule_chain import Chain  # noqa: E402

RUN = Path("/work/runs/s20")


def main():
    c = Chain(36, RUN, RUN / "B36", "r36")
    c.build_blend(Path("NeXtQSMTraining/nextqsm_training/candidates/vn_pv8"), 0.75)
    c.calibrate()
    c.rule35_conditions()
    print("rule 36: every condition holds: ship B", flush=True)


if __name__ == "__main__":
    main()
