"""Range-coding cost of entropy table sets: one held-out t2m field's latents (100 encoder
steps) coded with the pooled tables only vs with the pooled tables and every set (what
``GridModel.compress_grids`` does), and decoded; one thread.

    python benchmarks/prototypes/table_sets_cost.py benchmarks/results/models/<model with sets>.coinpp
"""
import sys, time
from pathlib import Path
import numpy as np, torch
ROOT = Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import datasets  # noqa: E402
from coinpp_pipeline import Model  # noqa: E402

torch.set_num_threads(1)
m = Model.load(sys.argv[1])
x = datasets.load("era5:t2m").test_chunks[0].reshape(1, 181, 360).astype(np.float64)
for lam in (0.1, 3.0):
    items = [[z[0] for z in m.fit_grids(m._normalise(x), np.isfinite(x), 100, lam)]]
    t = time.perf_counter(); a = m.tables.compress(items); t1 = time.perf_counter() - t
    t = time.perf_counter(); b = m.compress_grids(items); t2 = time.perf_counter() - t
    t = time.perf_counter(); m.decompress_grids(b, 1, m.config.level_shapes((181, 360))); t3 = time.perf_counter() - t
    print(f"lam {lam}: pooled compress {t1 * 1e3:.1f} ms ({len(a)} B), with {len(m.table_sets)} sets "
          f"{t2 * 1e3:.1f} ms ({len(b)} B), decompress {t3 * 1e3:.1f} ms")
