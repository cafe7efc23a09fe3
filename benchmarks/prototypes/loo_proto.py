import sys, numpy as np
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT))
from coinpp_pipeline import latent_grid as lg
from coinpp_pipeline.model import Model
m = Model.from_bytes(open(str(ROOT / "benchmarks/results/models") + "/eaf46ec551ed8b076d861aee26f17833a48be703483796a2cddeeeeef55f50e9.coinpp","rb").read())
K = 24; probs = m.tables._probs()
for lam in ["1.0", "10.0"]:
    f = np.load(f"/tmp/grids_{lam}.npz"); grids = [f[f"arr_{i}"] for i in range(len(f.files))]
    n = grids[0].shape[0]; L = len(grids)
    def ctx(i, lv):
        z = grids[lv][i]
        return lg.coarse_context(grids[lv+1][i] if lv+1 < L else None, z.shape), lg.row_contexts(z), z
    pooled = 0; loo = 0; mix = 0
    for i in range(n):
        for lv in range(L):
            cc, ss, z = ctx(i, lv)
            pooled += -np.log2(probs[lv][cc.ravel(), ss.ravel(), z.ravel()+K]).sum()
            c = np.full((lg.N_COARSE, lg.N_ROW, 2*K+1), 0.02)
            for j in range(n):
                if j == i: continue
                ccj, ssj, zj = ctx(j, lv)
                np.add.at(c[...], (ccj.ravel(), ssj.ravel(), zj.ravel()+K), 1)
            p = c / c.sum(-1, keepdims=True)
            loo += -np.log2(p[cc.ravel(), ss.ravel(), z.ravel()+K]).sum()
    print(f"lam {lam}: pooled model tables {pooled/n/8:.0f} B/field, leave-one-out same-lambda tables {loo/n/8:.0f} B/field")
