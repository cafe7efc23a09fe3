"""Encode the training fields of a dataset with the library's encoder (200 steps, SGA) at
several rate weights and save the integer grids, for table/context probes (ctx_proto.py).

    python benchmarks/prototypes/train_grids_proto.py --model M --dataset era5:t2m --lams 0.3 1 3 10 30 --split train
"""
import argparse, sys, time
from pathlib import Path
import numpy as np, torch
ROOT = Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import datasets  # noqa: E402
from coinpp_pipeline.model import Model  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--dataset", default="era5:t2m")
ap.add_argument("--lams", type=float, nargs="+", default=[0.3, 1, 3, 10, 30])
ap.add_argument("--split", default="train", choices=["train", "test"])
ap.add_argument("--steps", type=int, default=200)
ap.add_argument("--out", default="/tmp/ctx")
a = ap.parse_args()
torch.set_num_threads(2)
d = datasets.load(a.dataset)
m = Model.from_bytes(open(a.model, "rb").read())
x = getattr(d, a.split).astype(np.float64)
x = x.reshape(-1, *x.shape[-2:])
normed = m._normalise(x); valid = np.isfinite(x)
for lam in a.lams:
    t = time.time()
    parts = [m.fit_grids(normed[i:i + 8], valid[i:i + 8], a.steps, lam) for i in range(0, len(x), 8)]
    grids = [np.concatenate([p[lv] for p in parts]) for lv in range(m.config.levels)]
    rec = m.synthesize_grids(grids, x.shape[1:])
    psnr = 20 * np.log10(d.range) - 10 * np.log10(np.nanmean((rec - x) ** 2))
    np.savez(f"{a.out}/{a.split}_{lam}.npz", *grids)
    print(f"{a.split} lam {lam}: {len(x)} fields psnr {psnr:.2f} ({time.time() - t:.0f}s)", flush=True)
