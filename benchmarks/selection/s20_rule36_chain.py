"""Session 20, rule 36's evaluation chain (results_nextqsm.md), run from the repository root: B = `nextqsm-train blend`
of the shipped VN (0.25) and candidates/vn_pv8 (0.75), per-path levels calibrated with 1 flip (rule 28's convention),
then rule 35's conditions in its order, stopping at the first failed one. Logs and JSON under RUN/.
(Adapted from s20_rule35_chain.py.)"""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

RUN = Path("/work/runs/s20")
FIT = RUN / "cpu_vn_pv8"
Q = RUN / "B36"
PV8 = Path("NeXtQSMTraining/nextqsm_training/candidates/vn_pv8")
S = Path("NeXtQSM/nextqsm/models/weights")
PY = ".venv/bin/python"
S_CAL = {"lbv": 0.2136, "vsharp": 0.1245, "local": 0.1666}
BASE = 0.1299420348368585
S2 = {"default": 55.39, "vndc": 70.6, "xsim_mean": 0.674, "rise": [19.64, 19.89, 21.00, 15.81], "demo": 43.33,
      "demo_xsim": 0.619,
      # session 20 (results_diag_roi_bias / selection/s20_roi_bias_blur_noise_shipped.md, results_challenge_roi.md)
      "proxy_mae": [26.0, 21.5], "proxy_slope": [0.719, 0.740], "chal_mae_dgm": 21.3}
REFS = [39.2, 47.7, 41.7, 41.2]
TGV_1MM = [43.0, 46.5, 44.2, 40.0, 42.8]   # results_classical.md, the 1 mm conditions     # the best classical reference per held-out head (V-SHARP + iLSQR)


def sh(cmd, log):
    print("$", cmd, flush=True)
    with open(RUN / log, "w") as fh:
        subprocess.run(cmd, shell=True, stdout=fh, stderr=subprocess.STDOUT, check=True)
    return (RUN / log).read_text()


def verdict(name, ok, detail):
    print(f"({name}) {'passes' if ok else 'FAILS'}: {detail}", flush=True)
    if not ok:
        print("rule 36: not shipped", flush=True)
        sys.exit(0)


def main():
    if Q.exists():
        shutil.rmtree(Q)
    sh(f".venv/bin/nextqsm-train blend {S} {PV8} --alpha 0.75 --out {Q}", "r36_blend.log")
    sys.path[:0] = ["NeXtQSM"]
    from nextqsm.io import write_json_atomic
    from nextqsm.models.weights import load_manifest, set_defaults

    tta = load_manifest(Q)["defaults"]["tta"]
    set_defaults(Q, tta=1)
    cal = {}
    for path, extra in (("vsharp", "--size 64 --voxel-mm 0"), ("lbv", ""), ("local", "--local")):
        out = sh(f".venv/bin/nextqsm-train calibrate-level --heads --per-path --dry-run --weights-dir {Q} {extra}",
                 f"r36_cal_{path}.log")
        cal[path] = json.loads(out[out.index("{"):])["level"]
    set_defaults(Q, tta=tta)
    man = load_manifest(Q)
    e = man["models"]["nextqsm-vn"]
    e["levels"] = {p: BASE + cal[p] - S_CAL[p] for p in S_CAL}
    e["arch"]["level"] = e["levels"]["vsharp"]
    e["level_rule"] = {"rule": 36, "cal": cal, "S_cal": S_CAL, "formula": "0.1299 + cal_p(Q) - cal_p(S), 1 flip"}
    write_json_atomic(Q / "manifest.json", man)
    print("levels", e["levels"], flush=True)
    # (s) training maps 1-4 at 1 mm, S2 and Q8 in one call: tilted, rule 32's (a) and (b)
    sh(f"{PY} benchmarks/select_vn.py S2={S} Q={Q} --blur 0.8 1.2 --out {RUN / 'r36_select.json'}", "r36_select.log")
    r = json.loads((RUN / "r36_select.json").read_text())["results"]
    s2, q = r["S2"]["summary"], r["Q"]["summary"]
    verdict("s", q["nrmse_tilt"] <= s2["nrmse_tilt"] + 0.2 and q["blur_nrmse"] <= s2["blur_nrmse"] - 1.5
            and q["nrmse"] <= s2["nrmse"] + 1.0 and q["xsim_z"] >= s2["xsim_z"] - 0.01 and q["xsim_tilt"] >= s2["xsim_tilt"] - 0.01,
            f"tilted {q['nrmse_tilt']:.2f} vs {s2['nrmse_tilt']:.2f}, blurred {q['blur_nrmse']:.2f} vs {s2['blur_nrmse']:.2f}, "
            f"total {q['nrmse']:.2f} vs {s2['nrmse']:.2f}, XSIM {q['xsim_z']:.4f} / {q['xsim_tilt']:.4f} vs "
            f"{s2['xsim_z']:.4f} / {s2['xsim_tilt']:.4f}")
    # (r) deep grey ROI proxy on training maps 1-2 (1 mm, blur 1.0 + smooth noise 0.5 x RMS), the default path
    dflt = "nextqsm default (VN + TV refinement)"
    sh(f"{PY} benchmarks/diag_roi_bias.py --blur 1.0 --smooth-noise 0.5 --weights-dir {Q} --methods '{dflt}' "
       f"--out {RUN / 'r36_proxy.md'}", "r36_proxy.log")
    pr = json.loads((RUN / "r36_proxy.json").read_text())
    mae = [pr[k][dflt]["mae_dgm_ppb"] for k in ("1", "2")]
    slope = [pr[k][dflt]["slope"] for k in ("1", "2")]
    verdict("r", all(a < b for a, b in zip(mae, S2["proxy_mae"])) and all(a > b for a, b in zip(slope, S2["proxy_slope"])),
            f"DGM MAE {[round(v, 1) for v in mae]} ppb (S2 {S2['proxy_mae']}), slope {[round(v, 3) for v in slope]} "
            f"(S2 {S2['proxy_slope']})")
    # (c) challenge: whole mask (diag_challenge) and the default's deep grey ROI means (bench_challenge_roi)
    dflt_c = "nextqsm (default: VN + TV refinement)"
    sh(f"{PY} benchmarks/diag_challenge.py --weights-dir {Q} --out {RUN / 'r36_chal.md'}", "r36_chal.log")
    row = [l for l in (RUN / "r36_chal.md").read_text().splitlines() if l.startswith("| measured local field |") and "/" in l][0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    vndc, default = float(cells[2].split("/")[0]), float(cells[3].split("/")[0])
    sh(f"{PY} benchmarks/bench_challenge_roi.py --weights-dir {Q} --methods '{dflt_c}' --out {RUN / 'r36_chal_roi.md'}",
       "r36_chal_roi.log")
    roi = json.loads((RUN / "r36_chal_roi.json").read_text())["methods"][dflt_c]["vs_cosmos"]
    verdict("c", default <= S2["default"] and vndc <= S2["vndc"] - 1.0 and roi["mae_dgm_ppb"] < S2["chal_mae_dgm"],
            f"default {default}, VN + dc {vndc}, default's deep grey ROI MAE {roi['mae_dgm_ppb']:.1f} ppb "
            f"(slope {roi['slope']:.3f})")
    # (d) held-out z (+ noise for (e))
    g = sh(f"{PY} benchmarks/guard_level.py Q={Q}", "r36_guards.log")
    clean = [tuple(map(float, m)) for m in re.findall(r"Q: NRMSE ([\d.]+) XSIM ([\d.]+)", g)]
    noisy = [float(m) for m in re.findall(r"Q \+ noise: NRMSE ([\d.]+)", g)]
    nr, xs = [c[0] for c in clean[:4]], [c[1] for c in clean[:4]]
    sh(f"{PY} benchmarks/bench_nextqsm.py --only heads --size 64 --heads 13 14 15 16 --b0-tilt 25 --noise-var 0 "
           f"--methods nextqsm --weights-dir {Q} --out {RUN / 'r36_tilt.md'}", "r36_tilt.log")
    txs = [float(l.split("|")[3].split("/")[1]) for l in (RUN / "r36_tilt.md").read_text().splitlines()
           if re.match(r"^\| 1[3-6] \|", l)]
    ok = all(n <= 45 and x >= 0.60 and n < r for n, x, r in zip(nr, xs, REFS)) and sum(xs) / 4 >= S2["xsim_mean"] - 0.01 \
        and all(x >= 0.60 for x in txs)
    verdict("d", ok, f"NRMSE {nr}, XSIM {xs} (mean {sum(xs) / 4:.4f}), tilted XSIM {txs}")
    # (d2) held-out heads at 1 mm / 1x1x2 mm (rule 34's (1))
    sh(f"{PY} benchmarks/bench_nextqsm_1mm.py --param weights_dir={Q} --out {RUN / 'r36_1mm.md'}", "r36_1mm.log")
    one = json.loads((RUN / "r36_1mm.json").read_text())
    rows = one["rows"] if isinstance(one, dict) else one
    n1, x1 = [float(c["nrmse"]) for c in rows], [float(c["xsim"]) for c in rows]
    verdict("d2", all(n <= 45 and x >= 0.60 and n < t for n, x, t in zip(n1, x1, TGV_1MM)) and sum(n1) / 5 <= 38.22,
            f"NRMSE {[round(v, 1) for v in n1]} (mean {sum(n1) / 5:.2f}), XSIM {[round(v, 3) for v in x1]}")
    # (f) demo
    d = sh(f"{PY} benchmarks/guard_demo.py Q={Q}", "r36_demo.log")
    m = re.search(r"Q: mean NRMSE ([\d.]+), XSIM ([\d.]+)", d)
    verdict("f", float(m.group(1)) <= S2["demo"] + 1.0 and float(m.group(2)) >= S2["demo_xsim"] - 0.005, m.group(0))
    # (e) noise
    rises = [b - a for a, b in zip(nr, noisy)]
    verdict("e", all(r <= s + 1.0 for r, s in zip(rises, S2["rise"])), f"rises {[round(r, 2) for r in rises]}")
    print("rule 36: every condition holds: ship B", flush=True)


if __name__ == "__main__":
    main()
