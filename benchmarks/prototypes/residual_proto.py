"""Residual-layer size per dataset: for the first held-out chunk of each dataset, encoded
with its grid model at bounds (x range), the chunk bytes, the residual section R (real bytes)
and its mode, its decode time and the whole chunk's, and what the best Laplace-only coding of the same residual would take (ideal
code length + the 14-byte section head: the coder before session 14).

    python benchmarks/prototypes/residual_proto.py mri=M hadcm3=M era5:t2m=M --bounds 0.1 0.03 0.01 \
        [--rate-weights 0.3 1 3]
"""
import argparse, struct, sys, time
from pathlib import Path
import numpy as np, torch
ROOT = Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import datasets  # noqa: E402
from coinpp_pipeline.bitstream import unpack  # noqa: E402
from coinpp_pipeline.model import RESIDUAL_MODES, RESIDUAL_TRANSFORMS, Model, _decode_residual, _laplace_bits, _residual_transform  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("models", nargs="+", help="DATASET=MODEL")
ap.add_argument("--bounds", type=float, nargs="+", default=[0.1, 0.03, 0.01])
ap.add_argument("--rate-weights", type=float, nargs="+", default=[None], help="lambda (default: the model's)")
a = ap.parse_args()
torch.set_num_threads(2)
for spec in a.models:
    name, path = spec.split("=", 1)
    m = Model.load(path); d = datasets.load(name); c = d.test_chunks[0]
    for rel, lam in [(rel, lam) for rel in a.bounds for lam in a.rate_weights]:
        blob = m.encode(c, max_abs_error=rel * d.range, rate_weight=lam)
        r = unpack(blob).sections.get("R", b"")
        mode, width, _ = struct.unpack("<Bdf", r[1:14])
        t = time.perf_counter(); q = np.rint(_decode_residual(r, (1, *c.shape, 1)) / width).astype(np.int64)
        t_r = time.perf_counter() - t
        t = time.perf_counter(); m.decode(blob); t_all = time.perf_counter() - t
        lap = min(_laplace_bits(_residual_transform(q, t)) for t in range(len(RESIDUAL_TRANSFORMS))) / 8 + 14
        print(f"{name} bound {rel:g} x range, lambda {lam or m.config.rate_weight:g}: chunk {len(blob)} B ({c.size * d.raw_itemsize / len(blob):.1f}x), "
              f"R {len(r)} B [{RESIDUAL_MODES[mode]}], Laplace-only ≈ {lap:.0f} B "
              f"(chunk ≈ {len(blob) - len(r) + lap:.0f} B, {c.size * d.raw_itemsize / (len(blob) - len(r) + lap):.1f}x); "
              f"nonzero {np.mean(q != 0):.3f}; decode R {1e3 * t_r:.0f} ms of {1e3 * t_all:.0f} ms", flush=True)
