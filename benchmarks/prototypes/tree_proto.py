"""Prototype: shared latent grids across the fields of a 3-D chunk (root / binary tree)."""
import sys, time, math, argparse, numpy as np, torch
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import datasets
from coinpp_pipeline.model import Model
from coinpp_pipeline import latent_grid as lg
ap = argparse.ArgumentParser()
ap.add_argument("--dataset", default="hadcm3")
ap.add_argument("--model", required=True)
ap.add_argument("--struct", nargs="+", default=["flat", "root", "tree"])
ap.add_argument("--lams", type=float, nargs="+", default=[3, 30])
ap.add_argument("--steps", type=int, default=200)
ap.add_argument("--chunks", type=int, default=99)
a = ap.parse_args()
torch.set_num_threads(2)
d = datasets.load(a.dataset)
m = Model.from_bytes(open(a.model, "rb").read())
K = m.config.max_symbol
probs = m.tables._probs()

def nodes_for(B, struct):
    """list of (start, stop) ranges; each item sums nodes containing it."""
    if struct == "flat":
        return [(i, i + 1) for i in range(B)]
    if struct == "root":
        return [(0, B)] + [(i, i + 1) for i in range(B)]
    out = []
    def rec(s, e):
        out.append((s, e))
        if e - s > 1:
            mid = (s + e) // 2
            rec(s, mid); rec(mid, e)
    rec(0, B)
    return out

def table_bits(grids):
    """grids: list per level (N, h, w) int -> total bits under the model tables."""
    tot = 0.0
    for lv in range(len(grids)):
        for i in range(grids[lv].shape[0]):
            z = grids[lv][i]
            if not z.any():
                continue
            cc = lg.coarse_context(grids[lv+1][i] if lv+1 < len(grids) else None, z.shape)
            ss = lg.row_contexts(z)
            tot += -np.log2(probs[lv][cc.ravel(), ss.ravel(), z.ravel()+K]).sum()
    return tot

def fit(normed, valid, nodes, steps, lam):
    B = normed.shape[0]; shape = normed.shape[1:]
    shapes = m.config.level_shapes(shape)
    A = torch.zeros(B, len(nodes))
    for j, (s, e) in enumerate(nodes):
        A[s:e, j] = 1
    x = torch.from_numpy(np.where(valid, normed, 0).astype(np.float32))
    msk = torch.from_numpy(valid.astype(np.float32))
    zs = [torch.zeros((len(nodes), *s), requires_grad=True) for s in shapes]
    opt = torch.optim.Adam(zs, lr=m.config.encode_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(0)
    clim = m._climatology()
    for step in range(steps):
        noisy = [z + torch.rand(z.shape, generator=gen) - 0.5 for z in zs]
        rounded = [torch.round(z).detach() for z in zs]
        zq = noisy if step < 0.7 * steps else [z + (r - z).detach() for z, r in zip(zs, rounded)]
        items = [torch.einsum("bn,nhw->bhw", A, z) for z in zq]
        rec = m.network(items, clim, shape)
        mse = (((rec - x) ** 2) * msk).sum() / msk.sum()
        bits = m.network.rate_bits(noisy, rounded).sum()
        loss = mse + lam * bits / msk.numel()
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    g = [torch.round(z.detach()).clamp(-K, K) for z in zs]
    items = [torch.einsum("bn,nhw->bhw", A, z).clamp(-K, K) for z in g]
    with torch.no_grad():
        rec = m.network(items, clim, shape).numpy()
    return [z.long().numpy() for z in g], rec

chunks = d.test_chunks[: a.chunks]
for struct in a.struct:
    for lam in a.lams:
        t = time.time(); sse = 0; bits = 0; n = 0
        for c in chunks:
            c2 = c.reshape(-1, *c.shape[-2:]).astype(np.float64)
            normed = m._normalise(c2); valid = np.isfinite(c2)
            nodes = nodes_for(c2.shape[0], struct)
            g, rec = fit(normed, valid, nodes, a.steps, lam)
            rec = rec.astype(np.float64) * float(m.std[0]) + m.mean.astype(np.float64)
            sse += np.sum((rec - c2) ** 2); n += c2.size
            bits += table_bits(g)
            nz = sum(int((gl.reshape(len(nodes), -1) != 0).any(1).sum()) for gl in g)
        nbytes = bits / 8 + len(chunks) * 40
        psnr = 20 * np.log10(d.range) - 10 * np.log10(sse / n)
        print(f"{struct:5s} lam {lam:6g} ratio {n * d.raw_itemsize / nbytes:8.1f} psnr {psnr:.2f} "
              f"(table bytes/chunk {bits / 8 / len(chunks):.0f}, +40 B header each) {time.time()-t:.0f}s", flush=True)
