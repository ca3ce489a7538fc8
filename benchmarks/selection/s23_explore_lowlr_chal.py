"""Session 23 exploration after rule 44 (no rule): rule 44's L failed (s) and nothing else of it was read. Read its
challenge condition (c) against QL75 (`B42`) anyway, to know whether the low-lr direction moved the aim at all."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rule_chain import B42, Chain  # noqa: E402

RUN = Path("/work/runs/s23")


def main():
    c = Chain(0, RUN, RUN / "L", "xL", ref=B42)
    try:
        c.challenge(tol_default=0.3, vndc_gain=0.3, tol_mae=0.5)
    except SystemExit:
        pass


if __name__ == "__main__":
    main()
