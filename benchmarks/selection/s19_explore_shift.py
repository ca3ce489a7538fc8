"""Session 19 exploration (no rule, training maps 1-4 at 64^3): does shifting the crop (margin 8 / 12 / 16 voxels,
i.e. the U-Net pooling grid moved against the anatomy) add to the 8 flips? Mean NRMSE 33.02 (8 flips) -> 32.96 /
32.95 % with 2 / 3 shifts: no."""
import sys, numpy as np
sys.path[:0]=['NeXtQSM','NeXtQSMTraining','benchmarks']
from nextqsm.metrics import nrmse, xsim
from nextqsm.pipeline import QSMInput, run
from nextqsm_training.heads import realistic_head, tilted_b0
res={}
for i in (1,2,3,4):
    for tilt in (0.0,25.0):
        h=realistic_head(i,size=64,voxel_size=None,b0_dir=tilted_b0(tilt)); m=h['mask']>0
        inp=QSMInput(field=h['total_field'],mask=m,kind='total',voxel_size=tuple(map(float,h['voxel_size'])),b0_dir=tuple(map(float,h['b0_dir'])))
        c={}
        for tta in (1,8):
            for mg in (8,16,12):
                c[(tta,mg)]=run('nextqsm',inp,tta=tta,margin=mg).chi
        t=h['chi']
        row={'t1m8':nrmse(c[(1,8)],t,m),'t1m8+16':nrmse((c[(1,8)]+c[(1,16)])/2,t,m),'t8m8':nrmse(c[(8,8)],t,m),
             't8m16':nrmse(c[(8,16)],t,m),'t8m8+16':nrmse((c[(8,8)]+c[(8,16)])/2,t,m),'t8m8+12+16':nrmse((c[(8,8)]+c[(8,16)]+c[(8,12)])/3,t,m),
             'x_t8m8':xsim(c[(8,8)],t,m),'x_t8m8+16':xsim((c[(8,8)]+c[(8,16)])/2,t,m)}
        res[(i,tilt)]=row; print(i,tilt,{k:round(v,3) for k,v in row.items()},flush=True)
keys=list(next(iter(res.values())))
print('mean',{k:round(float(np.mean([r[k] for r in res.values()])),3) for k in keys})
