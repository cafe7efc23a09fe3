"""Hybrid probe: COIN++ grid reconstruction + SPERR on the residual (issue 5 direction
"neural prediction refined by a classical residual coder"). For each rate weight the
held-out chunks are encoded with Model.encode; the residual test - prediction is
compressed by SPERR at several bits/value; total bytes = COIN++ chunk + SPERR stream.

    python benchmarks/prototypes/hybrid_proto.py --model M --dataset era5:t2m --lams 3 10 30 \
        --bpp 0.02 0.04 0.08
"""
import argparse, json, sys
from pathlib import Path
import numpy as np, torch, imagecodecs.numcodecs as icn
ROOT = Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import datasets  # noqa: E402
from rd_summary import interp  # noqa: E402
from coinpp_pipeline.model import Model  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--dataset", default="era5:t2m")
ap.add_argument("--lams", nargs="+", type=float, default=[3, 10, 30])
ap.add_argument("--bpp", nargs="+", type=float, default=[0.01, 0.02, 0.04, 0.08])
a = ap.parse_args()
torch.set_num_threads(2)
d = datasets.load(a.dataset)
m = Model.from_bytes(open(a.model, "rb").read())
ref = ROOT / f"benchmarks/results/rd_compare_{a.dataset.replace(':', '_')}.json"
series: dict = {}
for r in json.loads(ref.read_text())["rows"]:
    series.setdefault(r["codec"], []).append((r["ratio"], r["psnr"]))
tests = [c.astype(np.float64) for c in d.test_chunks]
def psnr(recs):
    err = np.concatenate([(r - t).reshape(-1) for r, t in zip(recs, tests)])
    return 20 * np.log10(d.range) - 10 * np.log10(np.mean(err[np.isfinite(err)] ** 2))
def gap(ratio, p):
    sa = interp(series.get("SPERR bpp anomaly", []), ratio); sp = interp(series.get("SPERR bpp", []), ratio)
    return f"vs SPERR {p - sp:+.2f}" if sp is not None else "", f"vs SPERR-anom {p - sa:+.2f}" if sa is not None else ""
for lam in a.lams:
    blobs = [m.encode(c, rate_weight=lam) for c in d.test_chunks]
    preds = [np.asarray(x, np.float64).reshape(t.shape) for x, t in zip(m.decode_many(blobs), tests)]
    nb = sum(map(len, blobs)); r0 = d.raw_bytes / nb; p0 = psnr(preds)
    print(f"lam {lam}: coinpp {r0:.1f}x {p0:.2f} dB", *gap(r0, p0), flush=True)
    for bpp in a.bpp:
        tot, recs = nb, []
        for t, p in zip(tests, preds):
            c = icn.Sperr(level=bpp, mode="bpp")
            s = c.encode((t - p).astype(np.float32))
            tot += len(s)
            recs.append(p + np.asarray(c.decode(s), np.float64).reshape(t.shape))
        r = d.raw_bytes / tot; q = psnr(recs)
        print(f"   + SPERR {bpp} bpv: {r:.1f}x {q:.2f} dB  (sperr {tot - nb} B of {tot})", *gap(r, q), flush=True)
