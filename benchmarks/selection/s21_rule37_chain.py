"""Session 21, rule 37's evaluation chain (results_nextqsm.md), run from the repository root after
`nextqsm-train fit --config NeXtQSMTraining/nextqsm_training/configs/cpu_vn_pv9.yaml`: Q9 = the mean of the snapshots at
steps 2100-2500 exported into a copy of the shipped folder, per-path levels with 1 flip (rule 28's convention), then
rule 37's conditions against the shipped VN B (`Chain.rule37_conditions`), stopping at the first failed one. If Q9
fails a condition other than (c), the rule's fallback Q9b = 0.5 B + 0.5 Q9 (weight blend) runs the same conditions."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rule_chain import B36, Chain, candidate_then_blend  # noqa: E402

RUN = Path("/work/runs/s21")


def main():
    candidate_then_blend(37, RUN, B36, "Q9", "r37",
                         lambda c: c.build_average(RUN / "cpu_vn_pv9", range(2100, 2501, 100), "pv9_avg.pt"),
                         Chain.rule37_conditions, fallback_if=lambda failed: failed != "c")


if __name__ == "__main__":
    main()
