"""Session 23, rule 42's evaluation chain (results_nextqsm.md), run from the repository root: QL75 (session 22's
exploration, /work/runs/s22/QL75: 0.5 x the shipped QLb + 0.5 x candidates/vn_focal_lbv, levels already calibrated by
rule 28's convention; nextqsm-vn sha256 6673b8ba...) was read on (s), (c) and (q) by `s22_explore_blend75.py`; this
chain reads the rest of rule 41's conditions against QLb (`B40`), in rule 41's order, stopping at the first failed
one. No fallback."""
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rule_chain import B40, Chain  # noqa: E402

RUN = Path("/work/runs/s22")
SHA = "6673b8ba064d7abdfb5a22e399b7ffaceb43c3660dff1ed6664e0b1e5d9a97c2"


def main():
    q = RUN / "QL75"
    got = hashlib.sha256((q / "nextqsm-vn.safetensors").read_bytes()).hexdigest()
    if got != SHA:
        sys.exit(f"QL75 is not the explored blend (sha256 {got}); rebuild it with s22_explore_blend75.py")
    c = Chain(42, RUN, q, "r42", ref=B40)
    c.roi_proxy(tol_mae=0.5, tol_slope=0.01)                  # (r)
    c.heldout()                                               # (d)
    c.heldout_1mm(mean_max=B40["mean_1mm"] + 0.5)             # (d2)
    c.demo()                                                  # (f)
    c.noise()                                                 # (e)
    print("rule 42: every condition holds: ship QL75", flush=True)


if __name__ == "__main__":
    main()
