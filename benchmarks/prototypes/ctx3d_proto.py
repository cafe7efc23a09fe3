"""Inter-field entropy context probe for 3-D chunks (HadCM3 years, MRI slices): does the
previous field's latent at the same position predict the current one?

    python benchmarks/prototypes/ctx3d_proto.py --dataset hadcm3 --model M --lams 1 10

Encodes the training fields (in their order) and the held-out chunks with the library's
encoder, fits count tables with back-off on the training grids and prints the held-out code
length (B/field) for the library's causal contexts and for causal x previous-field symbol
(clipped to -1..1; the first field of a chunk sees 0). Ideal code lengths, not real chunks.
"""
import argparse, sys
from pathlib import Path
import numpy as np, torch
ROOT = Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import datasets  # noqa: E402
from coinpp_pipeline import latent_grid as lg  # noqa: E402
from coinpp_pipeline.model import Model  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--dataset", default="hadcm3")
ap.add_argument("--model", required=True)
ap.add_argument("--lams", type=float, nargs="+", default=[1.0, 10.0])
a = ap.parse_args()
torch.set_num_threads(2)
d = datasets.load(a.dataset)
m = Model.from_bytes(open(a.model, "rb").read())
K = m.config.max_symbol; S = 2 * K + 1; L = m.config.levels

def encode(x, lam):
    x = x.astype(np.float64).reshape(-1, *x.shape[-2:])
    parts = [m.fit_grids(m._normalise(x[i:i + 8]), np.isfinite(x[i:i + 8]), 200, lam) for i in range(0, len(x), 8)]
    return [np.concatenate([p[lv] for p in parts]) for lv in range(L)]

def ctx(grids, i, lv, prev_ok, inter):
    c = lg.level_contexts([g[i] for g in grids], lv, "causal")
    flat = np.ravel_multi_index(c, lg.CONTEXT_SHAPE["causal"])
    base = np.ravel_multi_index(c[:2], lg.CONTEXT_SHAPE["row"])
    if not inter:
        return flat, base
    prev = np.clip(grids[lv][i - 1], -1, 1) + 1 if prev_ok else np.ones_like(grids[lv][i])
    return flat * 3 + prev, base

def run(train_sets, test_sets, inter):
    n_ctx = int(np.prod(lg.CONTEXT_SHAPE["causal"])) * (3 if inter else 1)
    total = 0.0
    for lv in range(L):
        cnt = np.zeros((n_ctx, S)); bcnt = np.zeros((40, S)); cmap = np.zeros(n_ctx, np.int64)
        for grids, starts in train_sets:
            for i in range(grids[0].shape[0]):
                c, b = ctx(grids, i, lv, i not in starts, inter); z = grids[lv][i].ravel() + K
                np.add.at(cnt, (c.ravel(), z), 1); np.add.at(bcnt, (b.ravel(), z), 1); cmap[c.ravel()] = b.ravel()
        pb = (bcnt + 0.02) / (bcnt + 0.02).sum(-1, keepdims=True)
        p = (cnt + 2 * pb[cmap]) / (cnt.sum(-1, keepdims=True) + 2)
        for grids, starts in test_sets:
            for i in range(grids[0].shape[0]):
                c, b = ctx(grids, i, lv, i not in starts, inter); z = grids[lv][i].ravel() + K
                seen = cnt.sum(-1)[c.ravel()] > 0
                total += -np.log2(np.where(seen, p[c.ravel(), z], pb[b.ravel(), z])).sum()
    return total

for lam in a.lams:
    tr = encode(d.train, lam)
    te_chunks = [encode(c, lam) for c in d.test_chunks]
    n_te = sum(g[0].shape[0] for g in te_chunks)
    test_sets = [(g, {0}) for g in te_chunks]
    train_sets = [(tr, {0})]
    real = sum(len(m.tables.compress([[g[lv][i] for lv in range(L)] for i in range(g[0].shape[0])])) for g in te_chunks)
    print(f"lam {lam}: model tables (real G bytes) {real / n_te:.1f} B/field; refit causal "
          f"{run(train_sets, test_sets, False) / n_te / 8:.1f}; causal x previous field "
          f"{run(train_sets, test_sets, True) / n_te / 8:.1f}", flush=True)
