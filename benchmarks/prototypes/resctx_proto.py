"""Residual-symbol contexts for the error-bounded mode: ideal code lengths (bytes) of the
residual symbols of real chunks under candidate context models, vs the library's choice.

For the first held-out chunk of each dataset, encoded with its grid model at each bound
(model defaults), the residual symbols are recovered from the chunk's R section; each
transform (plain / left / lorenzo) is scored under
  * ``lib``: what the library stores (its R section, bytes),
  * ``nz4``: per-chunk histograms per row-above nonzero count (the library's modes 6-8;
    entropy + varint counts header),
  * ``magK``: per-chunk histograms per bucket of the row-above |symbol| sum (K buckets),
  * ``adaptive <ctx>``: no stored histogram: counts start at ``alpha`` per symbol and are
    updated after each row index (the decoder can do the same, row by row); ``+prev``
    adds, for 3-D chunks, the bucket of |symbol| at the same point of the previous field.

    python benchmarks/prototypes/resctx_proto.py mri=M hadcm3=M era5:t2m=M --bounds 0.03 0.01
"""
import argparse, math, struct, sys
from pathlib import Path
import numpy as np, torch
ROOT = Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import datasets  # noqa: E402
from coinpp_pipeline import bitstream  # noqa: E402
from coinpp_pipeline.bitstream import unpack  # noqa: E402
from coinpp_pipeline.model import Model, _decode_residual, _residual_transform, _rows  # noqa: E402


def above_sum(v):  # v (m, h, w) -> sum of |3 above| (0 on the first row)
    a = np.abs(v)
    p = np.pad(a, ((0, 0), (1, 0), (1, 1)))[:, :-1]
    return p[:, :, :-2] + p[:, :, 1:-1] + p[:, :, 2:]


def bucket(s, edges):
    return np.searchsorted(np.asarray(edges), s, side="right")


def static_bytes(sym, ctx, n_ctx):
    rmax = int(np.abs(sym).max(initial=0)); S = 2 * rmax + 1
    c = np.bincount(ctx.ravel() * S + sym.ravel() + rmax, minlength=n_ctx * S).reshape(n_ctx, S)
    tot = c.sum(1, keepdims=True); u = c > 0
    ent = -(c[u] * np.log2((c / np.maximum(tot, 1))[u])).sum()
    hdr = sum(len(bitstream._varint(int(x))) for x in c.ravel())
    return ent / 8 + hdr


def adaptive_bytes(sym, ctx, n_ctx, alpha=0.5):
    """Row index by row index: probabilities from counts so far (+alpha), then update."""
    m, h, w = sym.shape
    rmax = int(np.abs(sym).max(initial=0)); S = 2 * rmax + 1
    counts = np.full((n_ctx, S), alpha)
    bits = 0.0
    for j in range(h):
        s = sym[:, j].ravel() + rmax; c = ctx[:, j].ravel()
        p = counts[c, s] / counts[c].sum(1)
        bits -= np.log2(p).sum()
        np.add.at(counts, (c, s), 1)
    return bits / 8 + 2  # + a varint rmax-ish byte or two


ap = argparse.ArgumentParser()
ap.add_argument("models", nargs="+", help="DATASET=MODEL")
ap.add_argument("--bounds", type=float, nargs="+", default=[0.03, 0.01])
a = ap.parse_args()
torch.set_num_threads(2)
MAG = [1, 2, 3, 5, 9, 17]  # -> 7 buckets: 0,1,2,3-4,5-8,9-16,17+
PREV = [1, 2, 4]  # -> 4 buckets of |prev|
for spec in a.models:
    name, path = spec.split("=", 1)
    m = Model.load(path); d = datasets.load(name); c = d.test_chunks[0]
    for rel in a.bounds:
        blob = m.encode(c, max_abs_error=rel * d.range)
        r = unpack(blob).sections.get("R", b"")
        mode, width, _ = struct.unpack("<Bdf", r[1:14])
        q = np.rint(_decode_residual(r, (1, *c.shape, 1)) / width).astype(np.int64)
        np.save(f"/tmp/s15/q_{name.replace(':', '_')}_{rel:g}.npy", q)
        print(f"{name} bound {rel:g}: chunk {len(blob)} B, R {len(r)} B (mode {mode}), nonzero {np.mean(q != 0):.3f}", flush=True)
        for t in range(3):
            dd = _residual_transform(q, t)
            mi, h, w = _rows(dd.shape); v = dd.reshape(mi, h, w)
            nz = (np.abs(v) > 0).astype(np.int64)
            pnz = np.pad(nz, ((0, 0), (1, 0), (1, 1)))[:, :-1]
            nz4 = pnz[:, :, :-2] + pnz[:, :, 1:-1] + pnz[:, :, 2:]
            mag = bucket(above_sum(v), MAG)
            row = {"nz4": static_bytes(v, nz4, 4)}
            for k in (4, 7):
                e = MAG[: k - 1]
                row[f"mag{k}"] = static_bytes(v, bucket(above_sum(v), e), k)
            row["adapt nz4"] = adaptive_bytes(v, nz4, 4)
            row["adapt mag7"] = adaptive_bytes(v, mag, 7)
            if mi > 1 and c.ndim == 3:
                pv = np.zeros_like(v); pv[1:] = np.abs(v[:-1])
                pb = bucket(pv, PREV)
                row["adapt mag7+prev"] = adaptive_bytes(v, mag * 4 + pb, 28)
                row["mag7+prev static"] = static_bytes(v, mag * 4 + pb, 28)
            print(f"  {['plain', 'left', 'lorenzo'][t]:8s} " + "  ".join(f"{k} {b:.0f}" for k, b in row.items()), flush=True)
