"""Entropy-context probe: held-out code length of latent grids under count tables with
richer causal contexts, fitted on the training fields' encoder latents (train_grids_proto.py).

    python benchmarks/prototypes/ctx_proto.py --train-lams 0.3 1 3 10 30 --test-lams 1 10

Variants (all contexts are functions of already-decoded symbols):
  base   : coarse 3x3 |z| sum bin (8) x row-above |z| sum bin (5)   (the library's contexts)
  left   : base x |left| (0, 1, 2+)
  sign   : left x sign(left + up) (-, 0, +)
  parent : sign x sign of the collocated coarser latent (-, 0, +)
  rsign  : base x sign of the row-above 3-sum (row-parallel decoding stays possible)
  rparent: rsign x sign of the collocated coarser latent
Tables: counts + alpha * (base-context distribution), alpha = 2 (backoff smoothing).
"""
import argparse, sys
from pathlib import Path
import numpy as np
ROOT = Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT))
from coinpp_pipeline import latent_grid as lg  # noqa: E402

K = 24; S = 2 * K + 1

def load(split, lam, d):
    f = np.load(f"{d}/{split}_{lam}.npz"); return [f[f"arr_{i}"] for i in range(len(f.files))]

def contexts(grids, i, lv, variant):
    L = len(grids); z = grids[lv][i].astype(np.int64); h, w = z.shape
    coarse = grids[lv + 1][i] if lv + 1 < L else None
    base = lg.coarse_context(coarse, z.shape) * lg.N_ROW + lg.row_contexts(z)
    if variant == "base":
        return base, base
    up3 = np.pad(z, ((1, 0), (1, 1)))[:-1]; up3 = up3[:, :-2] + up3[:, 1:-1] + up3[:, 2:]
    par = np.zeros_like(z) if coarse is None else np.repeat(np.repeat(coarse, 2, 0), 2, 1)[:h, :w]
    if variant.startswith("r"):  # row-parallel: row above and coarser level only
        c = base * 3 + (np.sign(up3) + 1)
        if variant == "rparent":
            c = c * 3 + (np.sign(par) + 1)
        return c, base
    left = np.zeros_like(z); left[:, 1:] = z[:, :-1]
    up = np.zeros_like(z); up[1:] = z[:-1]
    if variant == "lv":  # left value (-2..2) x sign(up)
        return (base * 5 + np.clip(left, -2, 2) + 2) * 3 + np.sign(up) + 1, base
    if variant == "l3u3":  # left value (-1..1) x sign(up)
        return (base * 3 + np.clip(left, -1, 1) + 1) * 3 + np.sign(up) + 1, base
    if variant in ("l3u3ud", "l3u3l2"):
        c = (base * 3 + np.clip(left, -1, 1) + 1) * 3 + np.sign(up) + 1
        if variant == "l3u3ud":  # x sign of (up-left + up-right)
            zp = np.pad(z, ((1, 0), (1, 1)))
            return c * 3 + np.sign(zp[:-1, :-2] + zp[:-1, 2:]) + 1, base
        left2 = np.zeros_like(z); left2[:, 2:] = z[:, :-2]
        return c * 3 + np.clip(left2, -1, 1) + 1, base
    if variant == "lvuv":  # left value x up value
        return (base * 5 + np.clip(left, -2, 2) + 2) * 5 + np.clip(up, -2, 2) + 2, base
    c = base * 3 + np.minimum(np.abs(left), 2)
    if variant in ("sign", "parent"):
        c = c * 3 + (np.sign(left + up) + 1)
    if variant == "parent":
        c = c * 3 + (np.sign(par) + 1)
    return c, base

NCTX = {"l3u3ud": 1080, "l3u3l2": 1080, "l3u3": 360, "lv": 600, "lvuv": 1000, "rsign": 120, "rparent": 360, "base": 40, "left": 120, "sign": 360, "parent": 1080}

def bits(train_sets, test_sets, variant, alpha=2.0):
    L = len(test_sets[0]); total = 0.0
    for lv in range(L):
        cnt = np.zeros((NCTX[variant], S)); bcnt = np.zeros((40, S)); pairs = []
        for grids in train_sets:
            for i in range(grids[0].shape[0]):
                c, b = contexts(grids, i, lv, variant); z = grids[lv][i].ravel() + K
                np.add.at(cnt, (c.ravel(), z), 1); np.add.at(bcnt, (b.ravel(), z), 1)
                pairs.append((c.ravel(), b.ravel()))
        pb = (bcnt + 0.02) / (bcnt + 0.02).sum(-1, keepdims=True)
        # map each fine context to its base context (first occurrence)
        cmap = np.zeros(NCTX[variant], np.int64)
        for c, b in pairs:
            cmap[c] = b
        p = (cnt + alpha * pb[cmap]) / (cnt.sum(-1, keepdims=True) + alpha)
        for grids in test_sets:
            for i in range(grids[0].shape[0]):
                c, b = contexts(grids, i, lv, variant); z = grids[lv][i].ravel() + K
                if variant != "base":  # unseen fine contexts back off to their base table
                    unseen = cnt.sum(-1)[c.ravel()] == 0
                    pr = np.where(unseen, pb[b.ravel(), z], p[c.ravel(), z])
                else:
                    pr = p[c.ravel(), z]
                total += -np.log2(pr).sum()
    return total

ap = argparse.ArgumentParser()
ap.add_argument("--dir", default="/tmp/ctx")
ap.add_argument("--train-lams", nargs="+", default=["0.3", "1.0", "3.0", "10.0", "30.0"])
ap.add_argument("--test-lams", nargs="+", default=["1.0", "10.0"])
ap.add_argument("--variants", nargs="+", default=["base", "rsign", "rparent", "left", "sign", "parent", "lv", "lvuv"])
a = ap.parse_args()
train_all = [load("train", str(float(l)), a.dir) for l in a.train_lams]
for tl in a.test_lams:
    test = [load("test", str(float(tl)), a.dir)]; n = test[0][0].shape[0]
    same = [load("train", str(float(tl)), a.dir)]
    row = [f"test lam {tl}:"]
    for v in a.variants:
        bp = bits(train_all, test, v) / n / 8; bs = bits(same, test, v) / n / 8
        row.append(f"{v} pooled {bp:.0f} / same-lam {bs:.0f} B/field")
    print("  ".join(row), flush=True)
