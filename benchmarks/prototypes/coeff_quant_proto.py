"""Post-hoc probe (session 17): encode the 7 held-out t2m fields with a basis model, replace the
float16 basis coefficients by round(c / delta) * delta, report PSNR and the ideal Laplace code
length per field.

    python benchmarks/prototypes/coeff_quant_proto.py MODEL LAMBDA...
"""
import sys, time, math
from pathlib import Path
import numpy as np, torch
ROOT = Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import datasets
from coinpp_pipeline.model import Model
torch.set_num_threads(2)
d = datasets.load("era5:t2m")
m = Model.from_bytes(open(sys.argv[1], "rb").read())
lams = [float(v) for v in sys.argv[2:]]
test = np.stack([c.reshape(181, 360) for c in d.test_chunks]).astype(np.float64)
valid = np.isfinite(test)
normed = m._normalise(test)
tr = d.train.reshape(-1, 181, 360).astype(np.float64)
with torch.no_grad():
    st = m.basis_coefficients(torch.from_numpy(m._normalise(tr).astype(np.float32))).numpy()
s = np.sqrt((st ** 2).mean(0))
print("std", m.std, "train score rms", np.round(s, 4))
def psnr(rec):
    return 20 * np.log10(d.range) - 10 * np.log10(np.mean((rec - test) ** 2))
def lap_bits(q, b):
    b = np.maximum(b, 1e-3)
    # discretised Laplace mass of integer q, scale b
    p = np.where(q == 0, 1 - np.exp(-0.5 / b), 0.5 * (np.exp(-(np.abs(q) - 0.5) / b) - np.exp(-(np.abs(q) + 0.5) / b)))
    return -np.log2(np.maximum(p, 1e-12)).sum()
for lam in lams:
    t = time.time()
    grids, c = m.fit_fields_coeffs(normed, valid, m.config.encode_steps, lam)
    G = sum(len(m.compress_grids([[g[i] for g in grids]])) for i in range(7))
    print(f"lam {lam}: fit {time.time()-t:.0f}s, G bytes/field {G/7:.1f}")
    print(" held-out coeff rms", np.round(np.sqrt((c**2).mean(0)), 4))
    base = psnr(m.synthesize_grids(grids, (181, 360), c))
    nb = 20 + G / 7
    print(f"  float16: {d.raw_bytes/7/(nb+33):.1f}x {base:.3f} dB  (P 33 B)")
    for delta in [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064]:
        q = np.round(c / delta)
        rec = m.synthesize_grids(grids, (181, 360), q * delta)
        b1 = lap_bits(q, s / math.sqrt(2) / delta) / 7 / 8
        bo = min(lap_bits(q, np.full(16, bb)) for bb in np.geomspace(0.1, 1000, 200)) / 7 / 8
        p = psnr(rec)
        print(f"  delta {delta}: {p:.3f} dB ({p-base:+.3f}); P bytes/field train-scale {b1+2:.1f} oracle-one-scale {bo+2:.1f}; "
              f"ratio {d.raw_bytes/7/(nb+b1+2):.1f}x vs {d.raw_bytes/7/(nb+33):.1f}x")
