"""ARM variants on the same latents: held-out real bytes of the latent section under the
pooled tables, each table set, and ARMs trained (``coinpp_pipeline.latent_arm.fit_arm``) on
the encoder's training latents of one or all rate weights, with other widths / depths / steps.

Training latents come from ``grid_train.py … --table-sets … --latents-cache NPZ`` (the same
model's encoder, cross-fitted basis); held-out latents are encoded here once per rate weight
(cached in ``--test-cache``).

    python benchmarks/prototypes/arm_variants_proto.py --model M --dataset era5:t2m \
        --train-cache /tmp/runs/t2m_latents.npz --lams 1 3
"""
import argparse, sys, time
from pathlib import Path
import numpy as np, torch, constriction
ROOT = Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import datasets  # noqa: E402
from coinpp_pipeline.model import Model  # noqa: E402
from coinpp_pipeline.latent_arm import fit_arm  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--dataset", default="era5:t2m")
ap.add_argument("--train-cache", required=True)
ap.add_argument("--test-cache", default=None)
ap.add_argument("--lams", type=float, nargs="+", default=[1.0, 3.0])
ap.add_argument("--variants", nargs="+", default=["pooled:24:2:3000", "own:24:2:3000", "pooled:32:2:3000",
                                                    "pooled:24:3:3000", "pooled:24:2:8000"])
a = ap.parse_args()
torch.set_num_threads(2)
m = Model.from_bytes(open(a.model, "rb").read())
d = datasets.load(a.dataset)
with np.load(a.train_cache) as f:
    train = {}
    for lam, lv, key in sorted((float(k.split("/")[0]), int(k.split("/")[1]), k) for k in f.files):
        train.setdefault(lam, []).append(f[key])
items_of = lambda grids: [[g[i] for g in grids] for i in range(grids[0].shape[0])]  # noqa: E731
test_cache = Path(a.test_cache or f"/tmp/runs/test_latents_{a.dataset.replace(':', '_')}_{Path(a.model).stem[:8]}.npz")
test = {}
if test_cache.exists():
    with np.load(test_cache) as f:
        for lam, lv, key in sorted((float(k.split("/")[0]), int(k.split("/")[1]), k) for k in f.files):
            test.setdefault(lam, []).append(f[key])


def chunk_items(lam):
    """Held-out chunks' latents (one list of items per chunk) at ``lam``."""
    if lam not in test:
        grids_all = []
        for c in d.test_chunks:
            x = c.reshape(-1, *c.shape[-2:]).astype(np.float64)
            grids, _ = m.fit_fields_coeffs(m._normalise(x), np.isfinite(x), m.config.encode_steps, lam)
            grids_all.append(grids)
        test[lam] = [np.concatenate([g[lv] for g in grids_all]) for lv in range(m.config.levels)]
        np.savez(test_cache, **{f"{lm}/{lv}": g for lm, gs in test.items() for lv, g in enumerate(gs)})
    sizes = [int(np.prod(c.shape[:-2])) for c in d.test_chunks]
    bounds = np.cumsum([0] + sizes)
    its = items_of(test[lam])
    return [its[bounds[i]:bounds[i + 1]] for i in range(len(sizes))]


def arm_bytes(arm, chunks):
    total = 0
    for items in chunks:
        enc = constriction.stream.queue.RangeEncoder()
        arm.encode_to(enc, items)
        total += 4 * len(enc.get_compressed())
    return total


for lam in a.lams:
    chunks = chunk_items(lam)
    tab = sum(len(m.tables.compress(c)) for c in chunks)
    sets = [sum(len(t.compress(c)) for c in chunks) for t in m.table_sets]
    best_set = sum(min(len(t.compress(c)) for t in (m.tables, *m.table_sets)) for c in chunks)
    print(f"lam {lam}: pooled tables {tab} B, sets {sets}, best of tables+sets per chunk {best_set} B", flush=True)
    for v in a.variants:
        which, hidden, layers, steps = v.split(":")
        src = [lam] if which == "own" else sorted(train)
        if which == "own" and lam not in train:
            print(f"  {v}: no training latents at {lam}"); continue
        t = time.time()
        arm = fit_arm(sum((items_of(train[s]) for s in src), []), m.config.max_symbol, hidden=int(hidden),
                      layers=int(layers), steps=int(steps))
        n = arm_bytes(arm, chunks)
        print(f"  {v}: ARM {n} B ({100 * (n / best_set - 1):+.1f} % vs best tables/sets; fit {time.time() - t:.0f}s)", flush=True)
