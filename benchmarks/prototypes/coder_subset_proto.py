"""Coders fitted from part of a coder fit's latents cache (``grid_train.py … --latents-cache``):
one cross-fitting gap, or fewer rate weights — what a shorter coder fit gives, without
encoding again. Saves each model (with ``encode_rate="arm"``) under --out/models and prints
its path; measure them with grid_eval_proto.py.

    python benchmarks/prototypes/coder_subset_proto.py --model M --dataset era5:t2m \
        --cache latents.npz --cache-gaps 2 6 --gaps 6 --lams 0.3 1 3 10 --arm-chunk-items 7
"""
import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
from grid_train import _save, _train_fields  # noqa: E402

from coinpp_pipeline.grid_model import GridModel, fit_coders  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--dataset", default="era5:t2m")
ap.add_argument("--cache", required=True, help="latents cache of a coder fit of this model")
ap.add_argument("--cache-gaps", type=int, nargs="+", required=True, help="the gaps that fit used, in order")
ap.add_argument("--gaps", type=int, nargs="+", required=True, help="the gaps to keep")
ap.add_argument("--lams", type=float, nargs="+", required=True, help="the rate weights to keep")
ap.add_argument("--arm-chunk-items", type=int, default=1)
ap.add_argument("--out", default="benchmarks/results/subsets")
a = ap.parse_args()
m = GridModel.load(a.model)
train = _train_fields(a.dataset)
n = train.shape[0]
cache: dict[float, list[np.ndarray]] = {}
with np.load(a.cache) as f:  # keys "<lambda>/<level>"; items: gap after gap, fields in order
    for key in sorted(f.files, key=lambda k: (float(k.split("/")[0]), int(k.split("/")[1]))):
        cache.setdefault(float(key.split("/")[0]), []).append(f[key])
keep = [a.cache_gaps.index(g) for g in a.gaps]
sub = {lam: [np.concatenate([g[i * n:(i + 1) * n] for i in keep]) for g in cache[lam]] for lam in a.lams}
out = fit_coders(m, train, a.lams, table_sets=True, arm=True, arm_chunk_items=a.arm_chunk_items,
                 cross_fit_gaps=a.gaps, latents=sub)
_save(out.with_encoding(encode_rate="arm"), a.out)
