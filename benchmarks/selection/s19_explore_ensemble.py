"""Session 19 exploration (no rule; SynthSeg TRAINING maps 1-4 only): is the average of two VNs' chi (the shipped S
and the rule-25 candidate, both through the default pipeline with 2 flips) better than either? 64^3 (fitted voxels,
V-SHARP + VN), B0 along z and tilted 25 degrees. Run from the repository root with the candidate's folder (rule 31's
P2) as the argument. Result: mean NRMSE / XSIM S 34.00 / 0.653, P 35.97 / 0.620, their average 34.65 / 0.640: no."""
import sys

import numpy as np

sys.path[:0] = ['NeXtQSM', 'NeXtQSMTraining', 'benchmarks']
from nextqsm.metrics import nrmse, xsim
from nextqsm.pipeline import QSMInput, run
from nextqsm_training.heads import realistic_head, tilted_b0

W = {"S": "NeXtQSM/nextqsm/models/weights", "P": sys.argv[1]}
rows = []
for i in (1, 2, 3, 4):
    for tilt in (0.0, 25.0):
        h = realistic_head(i, size=64, voxel_size=None, b0_dir=tilted_b0(tilt))
        m = h['mask'] > 0
        inp = QSMInput(field=h['total_field'], mask=m, kind='total', voxel_size=tuple(map(float, h['voxel_size'])),
                       b0_dir=tuple(map(float, h['b0_dir'])))
        c = {k: run('nextqsm', inp, weights_dir=w).chi for k, w in W.items()}
        c['S+P'] = (c['S'] + c['P']) / 2
        r = {k: (nrmse(v, h['chi'], m), xsim(v, h['chi'], m)) for k, v in c.items()}
        rows.append(r)
        print(i, tilt, {k: (round(a, 2), round(b, 3)) for k, (a, b) in r.items()}, flush=True)
print('mean', {k: (round(float(np.mean([r[k][0] for r in rows])), 2), round(float(np.mean([r[k][1] for r in rows])), 4))
               for k in rows[0]})
