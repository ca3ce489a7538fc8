"""Session 20 exploration (diagnosis only, no shipping decision): where does the VN's deep grey-matter contrast
go on the 2016 challenge? ROI-mean slope vs COSMOS of the VN (dc_mu=0, no refinement) on (a) the measured
local field, (b) D * COSMOS (COSMOS's own dipole field: no model error), (c) with the noise conditioning's cone
energy input zeroed; for the shipped VN and the partial-volume candidates pv5 / pv6."""
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "NeXtQSM"), str(REPO / "NeXtQSMTraining"), str(REPO / "benchmarks")]
import torch  # noqa: E402

from bench_challenge_roi import DATA, agreement, roi_table  # noqa: E402
from nextqsm.dipole import forward_field  # noqa: E402
from nextqsm.io import load_nifti  # noqa: E402
from nextqsm.metrics import nrmse, referenced  # noqa: E402
from nextqsm.pipeline import QSMInput, run  # noqa: E402

torch.set_num_threads(2)
acq = json.loads((DATA / "acquisition.json").read_text())
vs = tuple(acq["voxel_size_mm_from_spatial_res_mat"])
lf = load_nifti(DATA / "phs_tissue.nii.gz").data
mask = load_nifti(DATA / "msk.nii.gz").data > 0
seg = np.rint(load_nifti(DATA / "evaluation_mask.nii.gz").data).astype(np.int32) * mask
labels = sorted(int(v) for v in np.unique(seg) if v)
cosmos = referenced(load_nifti(DATA / "chi_cosmos.nii.gz").data, mask)
ref = roi_table(cosmos, seg, labels)
dcos = (forward_field(cosmos * mask, vs, (0.0, 0.0, 1.0)) * mask).astype(np.float32)
cand = REPO / "NeXtQSMTraining" / "nextqsm_training" / "candidates"
for wname, wd in (("shipped", None), ("pv5", cand / "vn_pv5"), ("pv6", cand / "vn_pv6")):
    for fname, f in (("measured", lf), ("D*COSMOS", dcos)):
        inp = QSMInput(field=f, mask=mask, kind="local", voxel_size=vs, b0_dir=(0.0, 0.0, 1.0))
        for kw in ({"refine": False, "dc_mu": 0.0}, {"refine": False}, {}):
            r = run("nextqsm", inp, weights_dir=wd, **kw)
            chi = referenced(r.chi, mask)
            a = agreement(roi_table(chi, seg, labels), ref, labels)
            print(f"{wname:8s} {fname:9s} {json.dumps(kw):36s} slope {a['slope']:.3f} MAE_DGM {a['mae_dgm_ppb']:.1f} "
                  f"NRMSE {nrmse(chi, cosmos, mask):.1f}", flush=True)
for fname, f in (("measured", lf), ("D*COSMOS", dcos)):
    inp = QSMInput(field=f, mask=mask, kind="local", voxel_size=vs, b0_dir=(0.0, 0.0, 1.0))
    for m in ("lbv-tv", "tkd", "vsharp-ilsqr"):
        chi = referenced(run(m, inp).chi, mask)
        a = agreement(roi_table(chi, seg, labels), ref, labels)
        print(f"{m:8s} {fname:9s} {'':36s} slope {a['slope']:.3f} MAE_DGM {a['mae_dgm_ppb']:.1f} NRMSE {nrmse(chi, cosmos, mask):.1f}", flush=True)
