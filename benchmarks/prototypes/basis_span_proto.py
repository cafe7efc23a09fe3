"""How much of a field a basis of the training anomalies leaves (normalised energy, numpy):
held-out fields with the full basis vs training fields with the basis ``fit_coders`` /
``finetune_for_basis`` cross-fit them with (computed without the field and its ``g`` neighbours
either side; components beyond the remaining fields' span are zero, as in
``grid_model._cross_fitted``).

    python benchmarks/prototypes/basis_span_proto.py --dataset era5:t2m --k 16 --gaps 0 1 2 3 4 6
"""
import argparse, sys
from pathlib import Path
import numpy as np
ROOT = Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import datasets  # noqa: E402
from coinpp_pipeline.grid_model import principal_components  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--dataset", default="era5:t2m")
ap.add_argument("--k", type=int, default=16)
ap.add_argument("--gaps", type=int, nargs="+", default=[0, 1, 2, 3, 4, 6])
a = ap.parse_args()
d = datasets.load(a.dataset)
tr = d.train.reshape(-1, *d.train.shape[-2:]).astype(np.float64)
te = d.test.reshape(-1, *tr.shape[-2:]).astype(np.float64)
mean = tr.mean(0)
std = (tr - mean).std()
ntr, nte = (tr - mean) / std, (te - mean) / std


def left(x: np.ndarray, b: np.ndarray) -> float:
    c = np.einsum("hw,khw->k", x, b) / x.size
    return float(((x - np.einsum("k,khw->hw", c, b)) ** 2).mean())


def basis(rows: list[int]) -> np.ndarray:
    out = np.zeros((a.k, *ntr.shape[1:]))
    span = min(a.k, len(rows) - 1)
    out[:span] = principal_components(ntr[rows], np.ones_like(ntr[rows], bool), span)[0]
    return out


full = basis(list(range(len(ntr))))
print(f"held-out fields: energy {np.round((nte ** 2).mean(axis=(1, 2)), 2)}")
r = [left(x, full) for x in nte]
print(f"held-out, full {a.k}-component basis: left {np.round(r, 2)} mean {np.mean(r):.2f}")
for g in a.gaps:
    r = [left(ntr[i], basis([j for j in range(len(ntr)) if abs(j - i) > g])) for i in range(len(ntr))]
    print(f"training fields, basis without the field and {g} neighbours either side: mean left {np.mean(r):.2f} "
          f"(min {min(r):.2f}, max {max(r):.2f})")
