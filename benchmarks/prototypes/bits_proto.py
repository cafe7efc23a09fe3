import sys, time, numpy as np, torch
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import datasets
from coinpp_pipeline.model import Model
from coinpp_pipeline import latent_grid as lg
torch.set_num_threads(2)
d = datasets.load("era5:t2m")
m = Model.from_bytes(open(str(ROOT / "benchmarks/results/models") + "/eaf46ec551ed8b076d861aee26f17833a48be703483796a2cddeeeeef55f50e9.coinpp","rb").read())
te = d.test.astype(np.float64)
normed = m._normalise(te); valid = np.isfinite(te)
probs = m.tables._probs(); K = m.tables.max_symbol
out = {}
for lam in [1.0, 10.0]:
    t = time.time()
    grids = m.fit_grids(normed, valid, 200, lam)
    rec = m.synthesize_grids(grids, te.shape[1:])
    mse = np.mean((rec - te)**2); psnr = 20*np.log10(d.range) - 10*np.log10(mse)
    tot = 0
    print(f"lam {lam} psnr {psnr:.2f}  ({time.time()-t:.0f}s)")
    for lv in range(len(grids)):
        bits = 0; bits_or = 0
        cnt = {}
        for i in range(len(te)):
            z = grids[lv][i]
            cc = lg.coarse_context(grids[lv+1][i] if lv+1 < len(grids) else None, z.shape)
            ss = lg.row_contexts(z)
            p = probs[lv][cc.ravel(), ss.ravel(), z.ravel()+K]
            bits += -np.log2(p).sum()
        # oracle: held-out empirical entropy per context
        c = np.zeros((lg.N_COARSE, lg.N_ROW, 2*K+1))
        for i in range(len(te)):
            z = grids[lv][i]
            cc = lg.coarse_context(grids[lv+1][i] if lv+1 < len(grids) else None, z.shape)
            ss = lg.row_contexts(z)
            np.add.at(c, (cc.ravel(), ss.ravel(), z.ravel()+K), 1)
        pe = c / np.maximum(c.sum(-1, keepdims=True), 1)
        bits_or = -(c * np.log2(np.where(pe > 0, pe, 1))).sum()
        z = grids[lv]
        print(f"  level {lv} shape {z.shape[1:]} nonzero {np.mean(z!=0):.3f} max {np.abs(z).max()} bits/field {bits/len(te):.0f} oracle {bits_or/len(te):.0f}")
        tot += bits
    print(f"  total bytes/field {tot/8/len(te):.0f}  ratio {65160*4/(tot/8/len(te)+40):.1f}")
    np.savez(f"/tmp/grids_{lam}.npz", *grids)
