"""Session 21 exploration (no rule): Bf = 0.5 x the shipped VN + 0.5 x candidates/vn_focal (weight blend, levels by
rule 28's convention), read on rule 38's failed condition (held-out heads at 64^3 with B0 tilted 25 degrees) and on
the calcification benchmark, to inform the next session's rule."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rule_chain import B36, PY, Chain  # noqa: E402

RUN = Path("/work/runs/s21")


def main():
    c = Chain(0, RUN, RUN / "Bf", "xb", ref=B36)
    c.build_blend(Path("NeXtQSMTraining/nextqsm_training/candidates/vn_focal"), 0.5)
    c.calibrate()
    print(c.tilted(), flush=True)
    out = c.sh(f"{PY} benchmarks/diag_focal.py --weights-dir {c.q} --nextqsm-variants --out {c.out('focal.md')}",
               "xb_focal.log")
    print([l for l in out.splitlines() if l.startswith("| nextqsm |")][-1], flush=True)


if __name__ == "__main__":
    main()
