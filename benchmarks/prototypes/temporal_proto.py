"""Common-mode split for 3-D chunks, no retraining: a chunk (T, H, W) is coded as T + 1
fields — its time-mean field c (own chunk, at lam / --mean-weight), then each field minus c plus the model's
climatology M (x_t - c + M, fields with the chunk's shared anomaly removed). Decoded:
x_t = y_t - M + c. Compares ratio / PSNR with the plain coding of the same chunks.

    python benchmarks/prototypes/temporal_proto.py --model M --dataset hadcm3 --lams 0.03 0.1 0.3 1
"""
import argparse, json, sys
from pathlib import Path
import numpy as np, torch
ROOT = Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import datasets  # noqa: E402
from rd_summary import interp  # noqa: E402
from coinpp_pipeline.model import Model  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--dataset", default="hadcm3")
ap.add_argument("--lams", nargs="+", type=float, default=[0.1, 1])
ap.add_argument("--plain", action="store_true", help="also the plain coding")
ap.add_argument("--mean-weight", type=float, default=20.0, help="c is coded at lam / this")
ap.add_argument("--steps", type=int, default=None)
a = ap.parse_args()
torch.set_num_threads(2)
d = datasets.load(a.dataset)
m = Model.from_bytes(open(a.model, "rb").read())
series: dict = {}
for r in json.loads((ROOT / f"benchmarks/results/rd_compare_{a.dataset.replace(':', '_')}.json").read_text())["rows"]:
    series.setdefault(r["codec"], []).append((r["ratio"], r["psnr"]))
tests = [c.astype(np.float64) for c in d.test_chunks]
M = m.mean.astype(np.float64)
def report(tag, lam, recs, nbytes):
    err = np.concatenate([(r - t).reshape(-1) for r, t in zip(recs, tests)])
    p = 20 * np.log10(d.range) - 10 * np.log10(np.mean(err ** 2)); ratio = d.raw_bytes / nbytes
    sa = interp(series.get("SPERR bpp anomaly", []), ratio)
    print(f"lam {lam} {tag}: {ratio:.1f}x {p:.2f} dB  vs SPERR-anom {'-' if sa is None else f'{p - sa:+.2f}'}", flush=True)
for lam in a.lams:
    if a.plain:
        blobs = [m.encode(t.astype(np.float32), rate_weight=lam, steps=a.steps) for t in tests]
        recs = [np.asarray(r, np.float64).reshape(t.shape) for r, t in zip(m.decode_many(blobs), tests)]
        report("plain", lam, recs, sum(map(len, blobs)))
    blobs, recs = [], []
    for t in tests:
        c = t.mean(0)
        bc = m.encode(c[None].astype(np.float32), rate_weight=lam / a.mean_weight, steps=a.steps)
        b = m.encode((t - c + M).astype(np.float32), rate_weight=lam, steps=a.steps)
        rc, r = (np.asarray(v, np.float64) for v in m.decode_many([bc, b]))
        blobs += [bc, b]; recs.append(r - M + rc[0])
    report("common-mode", lam, recs, sum(map(len, blobs)))
