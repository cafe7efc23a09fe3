"""How much of a held-out ERA5 field's residual after the training basis its predecessor's
residual explains (true fields, no model): basis = top 16 principal components of the 17
training anomalies; per held-out field (time order) the residual energy / anomaly energy, the
correlation with the previous field's residual, and the share left after removing that one
more direction. Numpy only, seconds.

    python benchmarks/prototypes/prev_span_proto.py t2m msl u10 v10
"""
import sys
from pathlib import Path
import numpy as np
ROOT = Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks"))
import datasets  # noqa: E402

for v in sys.argv[1:] or ["t2m"]:
    d = datasets.load(f"era5:{v}")
    tr = d.train.reshape(len(d.train.reshape(-1, 181 * 360)), -1).astype(np.float64)
    te = np.stack([c.reshape(-1) for c in d.test_chunks]).astype(np.float64)
    mean = tr.mean(0)
    basis = np.linalg.svd(tr - mean, full_matrices=False)[2][:16]
    an = te - mean
    r = an - (an @ basis.T) @ basis
    e_an, e_r = (an**2).sum(1), (r**2).sum(1)
    left, corr = [], []
    for i in range(1, len(r)):
        p = r[i - 1]
        corr.append(float(r[i] @ p / np.sqrt((r[i] @ r[i]) * (p @ p))))
        left.append(float(((r[i] - (r[i] @ p) / (p @ p) * p) ** 2).sum() / e_r[i]))
    print(f"{v}: residual/anomaly energy {np.mean(e_r / e_an):.2f}; consecutive residuals correlate "
          f"{min(corr):.2f}-{max(corr):.2f}; with the previous residual as one more direction "
          f"{np.mean(left):.2f} of the residual left (fields 2..{len(r)})")
