"""Learned autoregressive entropy model probe (Cool-chic's "ARM" idea): held-out ideal code
length of a grid model's integer latents under a small MLP that maps causal neighbours (in
the causal scheme's diagonal order), the coarser level's 3x3 neighbourhood and static maps
(pooled training-anomaly std, climatology, row position) to a discretised Laplace, vs the real
bytes of count tables with the library's causal contexts fitted on the same training latents
(what a table set does). Latents from train_grids_proto.py (train and test splits, same lambda).

    python benchmarks/prototypes/arm_proto.py --dataset era5:t2m --lams 1 3 [--dir /tmp/ctx]
"""
import argparse, sys
from pathlib import Path
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
ROOT = Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import datasets  # noqa: E402
from coinpp_pipeline import latent_grid as lg  # noqa: E402

K = 24
# causal offsets (dr, dc) in diagonal order t = c + 2 r: (r-1, c+1) and (r-2, c+3) precede (r, c)
NB = [(0, -1), (0, -2), (0, -3), (-1, -1), (-1, 0), (-1, 1), (-1, -2), (-1, 2), (-2, 0), (-2, 1), (-2, -1), (-2, 2), (-2, 3)]

def load(d, split, lam):
    f = np.load(f"{d}/{split}_{float(lam)}.npz"); return [f[f"arr_{i}"] for i in range(len(f.files))]

def shifted(z, dr, dc):
    """z (B, h, w) -> value at (r + dr, c + dc), 0 outside."""
    b, h, w = z.shape
    out = torch.zeros_like(z)
    rs, re = max(0, -dr), min(h, h - dr); cs, ce = max(0, -dc), min(w, w - dc)
    if rs < re and cs < ce:
        out[:, rs:re, cs:ce] = z[:, rs + dr:re + dr, cs + dc:ce + dc]
    return out

def features(grids, lv, static):
    z = torch.from_numpy(grids[lv].astype(np.float32)); b, h, w = z.shape
    f = [shifted(z, dr, dc) for dr, dc in NB]
    if lv + 1 < len(grids):
        p = torch.from_numpy(grids[lv + 1].astype(np.float32))
        pu = p.repeat_interleave(2, 1).repeat_interleave(2, 2)[:, :h, :w]
        f += [shifted(pu, 2 * dr, 2 * dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
    else:
        f += [torch.zeros_like(z)] * 9
    s = [F.adaptive_avg_pool2d(m[None, None], (h, w))[0, 0].expand(b, h, w) for m in static]
    rows = torch.linspace(-1, 1, h)[None, :, None].expand(b, h, w)
    onehot = [torch.full_like(z, float(i == lv)) for i in range(len(grids))]
    x = torch.stack(f + s + [rows] + onehot, -1).reshape(-1, len(f) + len(s) + 1 + len(grids))
    return x, z.reshape(-1)

def nll_bits(out, z):
    mu, b = out[:, 0], F.softplus(out[:, 1]) + 0.02
    def cdf(v):
        return 0.5 + 0.5 * torch.sign(v) * (1 - torch.exp(-v.abs() / b))
    lo = torch.where(z <= -K, torch.zeros_like(z), cdf(z - 0.5 - mu)); hi = torch.where(z >= K, torch.ones_like(z), cdf(z + 0.5 - mu))
    return -torch.log2((hi - lo).clamp_min(1e-9))

ap = argparse.ArgumentParser()
ap.add_argument("--dataset", default="era5:t2m")
ap.add_argument("--lams", nargs="+", default=["1", "3"])
ap.add_argument("--dir", default="/tmp/ctx")
ap.add_argument("--hidden", type=int, default=32)
ap.add_argument("--steps", type=int, default=3000)
ap.add_argument("--no-static", action="store_true")
a = ap.parse_args()
torch.manual_seed(0); torch.set_num_threads(2)
d = datasets.load(a.dataset)
tr = d.train.reshape(-1, *d.train.shape[-2:]).astype(np.float64)
anom_std = tr.std(0); clim = tr.mean(0)
static = [] if a.no_static else [torch.from_numpy(((m - m.mean()) / m.std()).astype(np.float32)) for m in (anom_std, clim)]
for lam in a.lams:
    train, test = load(a.dir, "train", lam), load(a.dir, "test", lam)
    L = len(train); n_test = test[0].shape[0]
    tab = lg.GridEntropyModel.fit([[g[i] for g in train] for i in range(train[0].shape[0])], K, "causal")
    tab_bytes = len(tab.compress([[g[i] for g in test] for i in range(n_test)]))
    xs, zs = zip(*[features(train, lv, static) for lv in range(L)]); X, Z = torch.cat(xs), torch.cat(zs)
    tx, tz = zip(*[features(test, lv, static) for lv in range(L)])
    net = nn.Sequential(nn.Linear(X.shape[1], a.hidden), nn.GELU(), nn.Linear(a.hidden, a.hidden), nn.GELU(), nn.Linear(a.hidden, 2))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3); sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.steps)
    for step in range(a.steps):
        idx = torch.randint(0, len(Z), (8192,))
        loss = nll_bits(net(X[idx]), Z[idx]).mean()
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    with torch.no_grad():
        per_lv = [float(nll_bits(net(x), z).sum()) / 8 for x, z in zip(tx, tz)]
        tr_bits = float(nll_bits(net(X), Z).sum()) / 8 / train[0].shape[0]
    arm = sum(per_lv)
    nz = [int((g != 0).sum()) // n_test for g in test]
    print(f"lam {lam}: tables (real bytes) {tab_bytes / n_test:.0f} B/field, ARM ideal {arm / n_test:.0f} B/field "
          f"({100 * (arm / tab_bytes - 1):+.1f} %); ARM on train {tr_bits:.0f}; per level {[round(v / n_test) for v in per_lv]}; "
          f"nonzero/field {nz}", flush=True)
