import sys, time, numpy as np, torch
torch.set_num_threads(1)
sys.path.insert(0,'benchmarks')
from datasets import load
from coinpp_pipeline import Model
from coinpp_pipeline.grid_model import fit_rate_proxy
from coinpp_pipeline.metrics import psnr
ds=load("era5:t2m"); test=ds.test
m=Model.load("benchmarks/results/models/eaf46ec551ed8b076d861aee26f17833a48be703483796a2cddeeeeef55f50e9.coinpp")
f=fit_rate_proxy(m)
for lam in [float(a) for a in sys.argv[1:]] or [10.0]:
    for name, mm in [("learned proxy", m), ("fitted proxy", f)]:
        t=time.time(); blobs=[mm.encode(test[i:i+1], rate_weight=lam) for i in range(len(test))]
        rec=np.concatenate([mm.decode(b) for b in blobs])
        print(f"lam {lam} {name}: ratio {test.nbytes/sum(map(len,blobs)):.1f} PSNR {psnr(test,rec):.2f} ({time.time()-t:.0f}s)", flush=True)
