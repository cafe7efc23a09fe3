"""Interpolation predictors (SZ3-style, linear and cubic, multilevel, exact on integers) on
the residual symbols saved by resctx_proto.py (/tmp/s15/q_*.npy): order-0 code lengths (bytes,
static histograms + varint header) against plain / left / Lorenzo differences.

    python benchmarks/prototypes/resctx_proto.py ... ; python benchmarks/prototypes/interp_proto.py
"""
import sys, glob, numpy as np
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[2]))
from coinpp_pipeline import bitstream

def ent_bytes(sym_lists):
    """order-0 static histogram per list (+ varint header), bytes"""
    tot = 0.0
    for sym in sym_lists:
        sym = np.concatenate([s.ravel() for s in sym]) if isinstance(sym, list) else sym.ravel()
        if sym.size == 0: continue
        r = int(np.abs(sym).max()); c = np.bincount(sym + r, minlength=2*r+1)
        u = c > 0; p = c[u] / c.sum()
        tot += -(c[u] * np.log2(p)).sum() / 8 + sum(len(bitstream._varint(int(x))) for x in c)
    return tot

def interp_symbols(q, cubic=True):
    """q (h, w) int -> list of symbol arrays per (level, direction); exact integer predictions."""
    h, w = q.shape
    S = 1
    while S * 2 < max(h, w): S *= 2
    S = min(S, 16)
    out = []
    known = np.zeros_like(q, bool)
    # coarsest grid: left/lorenzo-coded
    base = q[::S, ::S]
    d = np.diff(base, axis=1, prepend=0); d = np.diff(d, axis=0, prepend=0)
    out.append(d)
    known[::S, ::S] = True
    s = S
    while s > 1:
        t = s // 2
        # along rows (axis 1): points (rows multiple of s, cols odd multiples of t)
        for axis in (1, 0):
            if axis == 1:
                rows = np.arange(0, h, s); cols = np.arange(t, w, s)
                get = lambda r, c: q[np.ix_(rows, np.clip(c, 0, w - 1))]
                n = w
            else:
                rows = np.arange(t, h, s); cols = np.arange(0, w, t)
                n = h
            if axis == 1:
                a = np.clip(cols - t, 0, w - 1); b = np.clip(cols + t, 0, w - 1)
                a3 = cols - 3 * t; b3 = cols + 3 * t
                A = q[np.ix_(rows, a)]; B = np.where(cols + t < w, q[np.ix_(rows, b)], A)
                A3 = np.where(a3 >= 0, q[np.ix_(rows, np.clip(a3, 0, w-1))], A)
                B3 = np.where(b3 < w, q[np.ix_(rows, np.clip(b3, 0, w-1))], B)
                target = q[np.ix_(rows, cols)]
            else:
                a = np.clip(rows - t, 0, h - 1); b = np.clip(rows + t, 0, h - 1)
                a3 = rows - 3 * t; b3 = rows + 3 * t
                A = q[np.ix_(a, cols)]; B = np.where((rows + t < h)[:, None], q[np.ix_(b, cols)], A)
                A3 = np.where((a3 >= 0)[:, None], q[np.ix_(np.clip(a3, 0, h-1), cols)], A)
                B3 = np.where((b3 < h)[:, None], q[np.ix_(np.clip(b3, 0, h-1), cols)], B)
                target = q[np.ix_(rows, cols)]
            if cubic:
                pred = np.floor((-A3 + 9 * A + 9 * B - B3 + 8) / 16).astype(np.int64)
            else:
                pred = np.floor((A + B + 1) / 2).astype(np.int64)
            out.append(target - pred)
        s = t
    return out

for f in sorted(glob.glob('/tmp/s15/q_*.npy')):
    q = np.load(f)
    shp = q.shape  # (1, *c.shape, 1)
    arr = q.reshape(-1, shp[-3], shp[-2] * shp[-1]) if q.ndim >= 4 else q.reshape(1, 1, -1)
    left = np.diff(arr, axis=-1, prepend=0)
    lor = np.diff(left, axis=-2, prepend=0)
    res = {"plain o0": ent_bytes([arr]), "left o0": ent_bytes([left]), "lorenzo o0": ent_bytes([lor])}
    for cub in (False, True):
        syms = [interp_symbols(item, cub) for item in arr]
        # one histogram per level/direction pooled over items
        per = [[s[i] for s in syms] for i in range(len(syms[0]))]
        res[f"interp{'3' if cub else '1'} per-level"] = ent_bytes(per)
        res[f"interp{'3' if cub else '1'} pooled"] = ent_bytes([[x for s in syms for x in s]])
    print(f.split('/')[-1], arr.shape, "  ".join(f"{k} {v:.0f}" for k, v in res.items()))
