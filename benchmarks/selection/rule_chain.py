"""The evaluation chain shared by the model rules of sessions 20+ (results_nextqsm.md): build a candidate weights
folder Q (average of a run's snapshots exported into a copy of the shipped folder, or a weight blend), calibrate its
per-path chi levels with 1 flip (rule 28's convention), then score conditions in a rule's order, stopping at the first
that fails. Each rule's script (``s20_rule33_chain.py`` ...) states its run, its candidate and its conditions.

Commands run from the repository root; every command's output goes to ``RUN/<log>`` and its line ``$ command`` to
stdout, as in ``ruleNN_chain.log``. ``RULE_CHAIN_REPLAY=1`` re-reads the logs and outputs of a finished chain instead
of running anything (no folder is built or written): its stdout must equal the chain's log.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

S = Path("NeXtQSM/nextqsm/models/weights")
PY = ".venv/bin/python"
S_CAL = {"lbv": 0.2136, "vsharp": 0.1245, "local": 0.1666}   # the shipped (session-11) VN's calibrations, 1 flip
BASE = 0.1299420348368585
#: S2 = the session-11 VN with 2 flips: its readings that the conditions compare against
S2 = {"default": 55.39, "vndc": 70.6, "xsim_mean": 0.674, "rise": [19.64, 19.89, 21.00, 15.81], "demo": 43.33,
      "demo_xsim": 0.619,
      # session 20 (results_diag_roi_bias / selection/s20_roi_bias_blur_noise_shipped.md, results_challenge_roi_s19.md)
      "proxy_mae": [26.0, 21.5], "proxy_slope": [0.719, 0.740], "chal_mae_dgm": 21.3}
#: B = the session-20 VN (rule 36, shipped since session 20) with 2 flips: the readings rule 37+ compare against
#: (selection/rule36_*; select_vn's readings are re-measured in each call, not stored)
B36 = {"default": 55.0, "vndc": 67.0, "xsim_mean": 0.684, "rise": [20.44, 20.41, 20.17, 16.26], "demo": 43.51,
       "demo_xsim": 0.615, "proxy_mae": [23.2, 18.2], "proxy_slope": [0.765, 0.795], "chal_mae_dgm": 18.8,
       "mean_1mm": 37.41,
       # session 21 (results_focal.md): the demo phantom's calcification, 6 phantoms, mean contrast / moment
       "calc_contrast": 0.73, "calc_moment": 0.34}
#: QLb = the session-22 VN (rule 40, shipped since session 22) with 2 flips: the readings rule 41+ compare against
#: (selection/rule40b_*)
B40 = {"default": 54.9, "vndc": 65.6, "xsim_mean": 0.682, "rise": [19.91, 19.89, 19.77, 15.68], "demo": 43.86,
       "demo_xsim": 0.613, "proxy_mae": [22.5, 17.7], "proxy_slope": [0.775, 0.803], "chal_mae_dgm": 18.4,
       "mean_1mm": 37.33, "calc_contrast": 0.759, "calc_moment": 0.398}
B42 = {"default": 54.9, "vndc": 64.9, "xsim_mean": 0.680, "rise": [19.64, 19.58, 19.58, 15.46], "demo": 44.16,
       "demo_xsim": 0.608, "proxy_mae": [22.2, 17.4], "proxy_slope": [0.779, 0.807], "chal_mae_dgm": 18.2,
       "mean_1mm": 37.55, "calc_contrast": 0.774, "calc_moment": 0.441, "tilt_xsim_mean": 0.662}
REFS = [39.2, 47.7, 41.7, 41.2]            # the best classical reference per held-out head (V-SHARP + iLSQR)
TGV_1MM = [43.0, 46.5, 44.2, 40.0, 42.8]   # results_classical.md, the 1 mm conditions
REPLAY = os.environ.get("RULE_CHAIN_REPLAY") == "1"


class Chain:
    """One rule's evaluation: ``run`` folder for logs, ``q`` the candidate folder, ``tag`` the log prefix (r33)."""

    def __init__(self, rule: int, run: Path, q: Path, tag: str, ref: dict | None = None):
        self.rule, self.run, self.q, self.tag = rule, Path(run), Path(q), tag
        self.ref = S2 if ref is None else ref   # the readings the conditions compare against
        self.nr = self.xs = self.noisy = None   # held-out readings of (d), reused by (e)
        self.failed: str | None = None          # the condition that stopped the chain

    def sh(self, cmd: str, log: str) -> str:
        print("$", cmd, flush=True)
        if not REPLAY:
            with open(self.run / log, "w") as fh:
                subprocess.run(cmd, shell=True, stdout=fh, stderr=subprocess.STDOUT, check=True)
        return (self.run / log).read_text()

    def out(self, name: str) -> Path:
        return self.run / f"{self.tag}_{name}"

    def verdict(self, name: str, ok: bool, detail: str) -> None:
        print(f"({name}) {'passes' if ok else 'FAILS'}: {detail}", flush=True)
        if not ok:
            self.failed = name
            print(f"rule {self.rule}: not shipped", flush=True)
            sys.exit(0)

    # ------------------------------------------------------------------ candidate
    def _fresh(self) -> None:
        if not REPLAY and self.q.exists():
            shutil.rmtree(self.q)

    def build_average(self, fit: Path, steps, avg: str) -> None:
        """Q = the mean of ``fit``'s snapshots at ``steps`` (those that exist), exported into a copy of S."""
        snaps = [p for p in (Path(fit) / "snapshots" / f"step_{s:07d}.pt" for s in steps) if p.exists()]
        self.sh(f".venv/bin/nextqsm-train average {' '.join(map(str, snaps))} --out {self.run / avg}",
                f"{self.tag}_average.log")
        self._fresh()
        if not REPLAY:
            shutil.copytree(S, self.q)
        self.sh(f".venv/bin/nextqsm-train export --checkpoint {self.run / avg} --weights-dir {self.q}",
                f"{self.tag}_export.log")

    def build_blend(self, b: Path, alpha: float) -> None:
        """Q = (1 - alpha) S + alpha B in weight space."""
        self._fresh()
        self.sh(f".venv/bin/nextqsm-train blend {S} {b} --alpha {alpha} --out {self.q}", f"{self.tag}_blend.log")

    def calibrate(self) -> None:
        """Per-path levels by rule 28's convention: 0.1299 + cal_p(Q) - cal_p(S), calibrations with 1 flip."""
        sys.path[:0] = ["NeXtQSM"]
        from nextqsm.io import write_json_atomic
        from nextqsm.models.weights import load_manifest, set_defaults

        tta = load_manifest(self.q)["defaults"]["tta"]
        if not REPLAY:
            set_defaults(self.q, tta=1)
        cal = {}
        for path, extra in (("vsharp", "--size 64 --voxel-mm 0"), ("lbv", ""), ("local", "--local")):
            out = self.sh(f".venv/bin/nextqsm-train calibrate-level --heads --per-path --dry-run --weights-dir {self.q} "
                          f"{extra}", f"{self.tag}_cal_{path}.log")
            cal[path] = json.loads(out[out.index("{"):])["level"]
        levels = {p: BASE + cal[p] - S_CAL[p] for p in S_CAL}
        if not REPLAY:
            set_defaults(self.q, tta=tta)
            man = load_manifest(self.q)
            e = man["models"]["nextqsm-vn"]
            e["levels"] = levels
            e["arch"]["level"] = levels["vsharp"]
            e["level_rule"] = {"rule": self.rule, "cal": cal, "S_cal": S_CAL,
                               "formula": "0.1299 + cal_p(Q) - cal_p(S), 1 flip"}
            write_json_atomic(self.q / "manifest.json", man)
        print("levels", levels, flush=True)

    # ------------------------------------------------------------------ conditions
    def training_maps(self, name: str = "s", split_ab: bool = False, blur_gain: float = 1.5, total_tol: float = 1.0,
                      tilt_tol: float = 0.2, xsim_tol: float = 0.01, xsim_tilt_tol: float | None = None) -> None:
        """``select_vn.py`` on training maps 1-4 at 1 mm, S2 and Q in one call. (s): tilted <= S2 + ``tilt_tol``
        (negative: a required gain) and rule 32's (a) and (b) together; ``split_ab``: rule 32's (a) and (b) alone, as
        two verdicts. ``blur_gain``: blurred <= S2's - blur_gain (negative: a tolerance); ``total_tol``: total <= S2's
        + total_tol; XSIM z >= S2's - ``xsim_tol``, tilted >= S2's - ``xsim_tilt_tol`` (default ``xsim_tol``)."""
        xt = xsim_tol if xsim_tilt_tol is None else xsim_tilt_tol
        self.sh(f"{PY} benchmarks/select_vn.py S2={S} Q={self.q} --blur 0.8 1.2 --out {self.out('select.json')}",
                f"{self.tag}_select.log")
        r = json.loads(self.out("select.json").read_text())["results"]
        s2, q = r["S2"]["summary"], r["Q"]["summary"]
        b_ok = q["nrmse"] <= s2["nrmse"] + total_tol and q["xsim_z"] >= s2["xsim_z"] - xsim_tol and q["xsim_tilt"] >= s2["xsim_tilt"] - xt
        if split_ab:
            self.verdict("a", q["blur_nrmse"] <= s2["blur_nrmse"] - blur_gain,
                         f"blurred {q['blur_nrmse']:.2f} vs S2 {s2['blur_nrmse']:.2f}")
            self.verdict("b", b_ok, f"total {q['nrmse']:.2f} vs {s2['nrmse']:.2f}, XSIM {q['xsim_z']:.4f} / "
                         f"{q['xsim_tilt']:.4f} vs {s2['xsim_z']:.4f} / {s2['xsim_tilt']:.4f}")
            return
        self.verdict(name, q["nrmse_tilt"] <= s2["nrmse_tilt"] + tilt_tol and q["blur_nrmse"] <= s2["blur_nrmse"] - blur_gain and b_ok,
                     f"tilted {q['nrmse_tilt']:.2f} vs {s2['nrmse_tilt']:.2f}, blurred {q['blur_nrmse']:.2f} vs "
                     f"{s2['blur_nrmse']:.2f}, total {q['nrmse']:.2f} vs {s2['nrmse']:.2f}, XSIM {q['xsim_z']:.4f} / "
                     f"{q['xsim_tilt']:.4f} vs {s2['xsim_z']:.4f} / {s2['xsim_tilt']:.4f}")

    def roi_proxy(self, tol_mae: float = 0.0, tol_slope: float = 0.0) -> None:
        """(r) deep grey ROI proxy on training maps 1-2 (1 mm, blur 1.0 + smooth noise 0.5 x RMS), the default path:
        each map's MAE < ref's + tol_mae (ppb) and slope > ref's - tol_slope."""
        dflt = "nextqsm default (VN + TV refinement)"
        self.sh(f"{PY} benchmarks/diag_roi_bias.py --blur 1.0 --smooth-noise 0.5 --weights-dir {self.q} --methods '{dflt}' "
                f"--out {self.out('proxy.md')}", f"{self.tag}_proxy.log")
        pr = json.loads(self.out("proxy.json").read_text())
        mae = [pr[k][dflt]["mae_dgm_ppb"] for k in ("1", "2")]
        slope = [pr[k][dflt]["slope"] for k in ("1", "2")]
        r, who = self.ref, ("S2" if self.ref is S2 else "ref")
        self.verdict("r", all(a < b + tol_mae for a, b in zip(mae, r["proxy_mae"]))
                     and all(a > b - tol_slope for a, b in zip(slope, r["proxy_slope"])),
                     f"DGM MAE {[round(v, 1) for v in mae]} ppb ({who} {r['proxy_mae']}), slope {[round(v, 3) for v in slope]} "
                     f"({who} {r['proxy_slope']})")

    def challenge(self, tol_default: float = 0.0, vndc_gain: float = 1.0, tol_mae: float = 0.0) -> None:
        """(c) whole mask (diag_challenge) and the default's deep grey ROI means (bench_challenge_roi): default <= ref's
        + tol_default, VN + dc <= ref's - vndc_gain, ROI MAE < ref's + tol_mae."""
        dflt_c = "nextqsm (default: VN + TV refinement)"
        self.sh(f"{PY} benchmarks/diag_challenge.py --weights-dir {self.q} --out {self.out('chal.md')}", f"{self.tag}_chal.log")
        row = [l for l in self.out("chal.md").read_text().splitlines() if l.startswith("| measured local field |") and "/" in l][0]
        cells = [c.strip() for c in row.strip("|").split("|")]
        vndc, default = float(cells[2].split("/")[0]), float(cells[3].split("/")[0])
        self.sh(f"{PY} benchmarks/bench_challenge_roi.py --weights-dir {self.q} --methods '{dflt_c}' --out {self.out('chal_roi.md')}",
                f"{self.tag}_chal_roi.log")
        roi = json.loads(self.out("chal_roi.json").read_text())["methods"][dflt_c]["vs_cosmos"]
        r = self.ref
        self.verdict("c", default <= r["default"] + tol_default and vndc <= r["vndc"] - vndc_gain
                     and roi["mae_dgm_ppb"] < r["chal_mae_dgm"] + tol_mae,
                     f"default {default}, VN + dc {vndc}, default's deep grey ROI MAE {roi['mae_dgm_ppb']:.1f} ppb "
                     f"(slope {roi['slope']:.3f})")

    def guards(self) -> tuple[list[tuple[float, float]], list[float]]:
        """``guard_level.py``: held-out heads 13-16 at 64^3 along z, clean (NRMSE %, XSIM) and with the noise draws
        (NRMSE %); also kept as ``self.nr``, ``self.xs``, ``self.noisy`` for (e)."""
        g = self.sh(f"{PY} benchmarks/guard_level.py Q={self.q}", f"{self.tag}_guards.log")
        clean = [tuple(map(float, m)) for m in re.findall(r"Q: NRMSE ([\d.]+) XSIM ([\d.]+)", g)][:4]
        self.noisy = [float(m) for m in re.findall(r"Q \+ noise: NRMSE ([\d.]+)", g)]
        self.nr, self.xs = [c[0] for c in clean], [c[1] for c in clean]
        return clean, self.noisy

    def tilted(self) -> list[str]:
        """``bench_nextqsm.py`` on held-out heads 13-16 at 64^3 with B0 tilted 25 degrees: per head the table cell
        'NRMSE / XSIM / ...'."""
        self.sh(f"{PY} benchmarks/bench_nextqsm.py --only heads --size 64 --heads 13 14 15 16 --b0-tilt 25 --noise-var 0 "
                f"--methods nextqsm --weights-dir {self.q} --out {self.out('tilt.md')}", f"{self.tag}_tilt.log")
        return [l.split("|")[3].strip() for l in self.out("tilt.md").read_text().splitlines()
                if re.match(r"^\| 1[3-6] \|", l)]

    def heldout(self, tilt_xsim_mean_min: float | None = None) -> None:
        """(d) held-out heads 13-16 at 64^3 along z (with the noise draws of (e)) and tilted 25 degrees; with
        ``tilt_xsim_mean_min`` also the tilted heads' mean XSIM >= it."""
        self.guards()
        nr, xs = self.nr, self.xs
        txs = [float(c.split("/")[1]) for c in self.tilted()]
        ok = all(n <= 45 and x >= 0.60 and n < r for n, x, r in zip(nr, xs, REFS)) and sum(xs) / 4 >= self.ref["xsim_mean"] - 0.01 \
            and all(x >= 0.60 for x in txs) and (tilt_xsim_mean_min is None or sum(txs) / 4 >= tilt_xsim_mean_min)
        self.verdict("d", ok, f"NRMSE {nr}, XSIM {xs} (mean {sum(xs) / 4:.4f}), tilted XSIM {txs}"
                     + ("" if tilt_xsim_mean_min is None else f" (mean {sum(txs) / 4:.4f})"))

    def heldout_1mm(self, mean_max: float = 38.22) -> None:
        """(d2) held-out heads at 1 mm / 1x1x2 mm (rule 34's (1)); mean NRMSE <= ``mean_max``."""
        self.sh(f"{PY} benchmarks/bench_nextqsm_1mm.py --param weights_dir={self.q} --out {self.out('1mm.md')}",
                f"{self.tag}_1mm.log")
        one = json.loads(self.out("1mm.json").read_text())
        rows = one["rows"] if isinstance(one, dict) else one
        n1, x1 = [float(c["nrmse"]) for c in rows], [float(c["xsim"]) for c in rows]
        self.verdict("d2", all(n <= 45 and x >= 0.60 and n < t for n, x, t in zip(n1, x1, TGV_1MM)) and sum(n1) / 5 <= mean_max,
                     f"NRMSE {[round(v, 1) for v in n1]} (mean {sum(n1) / 5:.2f}), XSIM {[round(v, 3) for v in x1]}")

    def demo(self) -> None:
        """(f) the demo phantom, 3 seeds."""
        d = self.sh(f"{PY} benchmarks/guard_demo.py Q={self.q}", f"{self.tag}_demo.log")
        m = re.search(r"Q: mean NRMSE ([\d.]+), XSIM ([\d.]+)", d)
        self.verdict("f", float(m.group(1)) <= self.ref["demo"] + 1.0 and float(m.group(2)) >= self.ref["demo_xsim"] - 0.005,
                     m.group(0))

    def noise(self) -> None:
        """(e) noise rise per held-out head (the draws of (d)) <= ref's + 1.0."""
        rises = [b - a for a, b in zip(self.nr, self.noisy)]
        self.verdict("e", all(r <= s + 1.0 for r, s in zip(rises, self.ref["rise"])), f"rises {[round(r, 2) for r in rises]}")

    def focal(self, contrast_gain: float = 0.0, moment_gain: float = 0.0) -> None:
        """(q) ``diag_focal.py``, the NeXtQSM default only: the demo phantom's calcification at 2 and 1.5 mm, seeds
        0-2; mean contrast >= ref's + contrast_gain and mean moment >= ref's + moment_gain."""
        self.sh(f"{PY} benchmarks/diag_focal.py --methods nextqsm --nextqsm-variants --weights-dir {self.q} "
                f"--out {self.out('focal.md')}", f"{self.tag}_focal.log")
        lst = json.loads(self.out("focal.json").read_text())["nextqsm"]
        con = sum(x["contrast"] for x in lst) / len(lst)
        mom = sum(x["moment"] for x in lst) / len(lst)
        r = self.ref
        self.verdict("q", con >= r["calc_contrast"] + contrast_gain and mom >= r["calc_moment"] + moment_gain,
                     f"calcification contrast {con:.3f}, moment {mom:.3f} (ref {r['calc_contrast']} / {r['calc_moment']})")

    def rule35_conditions(self) -> None:
        """Rule 35's conditions in its order (rule 36 re-used them): (s), (r), (c), (d), (d2), (f), (e)."""
        self.training_maps()
        self.roi_proxy()
        self.challenge()
        self.heldout()
        self.heldout_1mm()
        self.demo()
        self.noise()

    def rule37_conditions(self) -> None:
        """Rule 37's conditions against B (``ref=B36``), in its order: (c) first (the rule's aim), then (s), (r), (d),
        (d2), (f), (e), with tolerances instead of rule 35's required gains except on the challenge's VN + dc."""
        self.challenge(tol_default=0.3, vndc_gain=1.0, tol_mae=0.5)
        self.training_maps(blur_gain=-0.5, total_tol=0.5)
        self.roi_proxy(tol_mae=0.5, tol_slope=0.01)
        self.heldout()
        self.heldout_1mm(mean_max=self.ref["mean_1mm"] + 0.5)
        self.demo()
        self.noise()


def candidate_then_blend(rule: int, run: Path, ref: dict, name: str, tag: str, build, conditions,
                         fallback_if=lambda failed: True, shipped: str = "B", alpha: float = 0.5) -> None:
    """A rule with a fixed fallback: candidate ``name`` (folder ``run/name``, built by ``build(chain)``, levels
    calibrated) runs ``conditions(chain)``; if it fails a condition for which ``fallback_if(condition)`` holds, the
    weight blend ``name + 'b'`` = (1 - alpha) x the shipped VN (called ``shipped`` in the log) + alpha x the candidate
    runs the same conditions (log prefix ``tag + 'b'``)."""
    c = Chain(rule, run, Path(run) / name, tag, ref=ref)
    build(c)
    c.calibrate()
    try:
        conditions(c)
        print(f"rule {rule}: every condition holds: ship {name}", flush=True)
        return
    except SystemExit:
        if not fallback_if(c.failed):
            return
    print(f"rule {rule} fallback: {name}b = {1 - alpha:g} {shipped} + {alpha:g} {name}", flush=True)
    cb = Chain(rule, run, Path(run) / f"{name}b", f"{tag}b", ref=ref)
    cb.build_blend(Path(run) / name, alpha)
    cb.calibrate()
    conditions(cb)
    print(f"rule {rule}: every condition holds: ship {name}b", flush=True)
