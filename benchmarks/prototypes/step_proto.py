import sys, time, math, numpy as np, torch
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import datasets
from coinpp_pipeline.model import Model
from coinpp_pipeline import latent_grid as lg
torch.set_num_threads(2)
d = datasets.load("era5:t2m")
raw = open(str(ROOT / "benchmarks/results/models") + "/eaf46ec551ed8b076d861aee26f17833a48be703483796a2cddeeeeef55f50e9.coinpp","rb").read()
te = d.test.astype(np.float64)
K = 24
def oracle_bits(grids):
    tot = 0
    for lv in range(len(grids)):
        c = np.zeros((lg.N_COARSE, lg.N_ROW, 2*K+1))
        for i in range(len(te)):
            z = np.clip(grids[lv][i], -K, K)
            cc = lg.coarse_context(grids[lv+1][i] if lv+1 < len(grids) else None, z.shape)
            ss = lg.row_contexts(z)
            np.add.at(c, (cc.ravel(), ss.ravel(), z.ravel()+K), 1)
        pe = c / np.maximum(c.sum(-1, keepdims=True), 1)
        tot += -(c * np.log2(np.where(pe > 0, pe, 1))).sum()
    return tot / len(te)
for s, lam in [(float(a), float(b)) for a, b in (x.split(",") for x in sys.argv[1:])]:
    m = Model.from_bytes(raw)
    with torch.no_grad():
        m.network.gain.mul_(s); m.network.log_scale.add_(-math.log(s))
    normed = m._normalise(te); valid = np.isfinite(te)
    grids = m.fit_grids(normed, valid, 200, lam)
    rec = m.synthesize_grids(grids, te.shape[1:])
    psnr = 20*np.log10(d.range) - 10*np.log10(np.mean((rec - te)**2))
    b = oracle_bits(grids)
    print(f"s {s} lam {lam} psnr {psnr:.2f} oracle bytes/field {b/8:.0f} ratio {65160*4/(b/8+40):.1f} maxabs {[int(np.abs(g).max()) for g in grids]}", flush=True)
