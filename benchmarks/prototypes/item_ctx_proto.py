"""How much would the previous item's latent (same level, same position) tell the coder? (session 17)
In-sample empirical entropies of held-out latents per level: H(z), H(z | left), H(z | left, prev).

    python benchmarks/prototypes/item_ctx_proto.py DATASET MODEL LAMBDA... [--stack]

``--stack``: the held-out chunks as one chunk, in order (ERA5: the 7 fields, each after its
predecessor in time — what a time-chunked archive would hold; session 20).
"""
import sys
from pathlib import Path
import numpy as np, torch
ROOT = Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import datasets
from coinpp_pipeline.model import Model
from coinpp_pipeline.latent_arm import LatentARM
torch.set_num_threads(2)
stack = "--stack" in sys.argv
args = [a for a in sys.argv[1:] if a != "--stack"]
ds, mpath, lams = args[0], args[1], [float(v) for v in args[2:]]
d = datasets.load(ds)
chunks = [np.concatenate([c.reshape(-1, *c.shape[-2:]) for c in d.test_chunks])] if stack else d.test_chunks
m = Model.from_bytes(open(mpath, "rb").read())
def H(keys, z):
    # empirical conditional entropy (bits) of z given keys
    tot = 0.0
    k = np.unique(keys, axis=0, return_inverse=True)[1].reshape(-1)
    for g in np.unique(k):
        zz = z[k == g]
        _, c = np.unique(zz, return_counts=True)
        p = c / c.sum()
        tot += -(c * np.log2(p)).sum()
    return tot
for lam in lams:
    zs_all = []
    for c in chunks:
        x = c.reshape(-1, *c.shape[-2:]).astype(np.float64)
        g = m.fit_fields(m._normalise(x), np.isfinite(x), m.config.encode_steps, lam)
        zs_all.append(g)
    arm_bits = 0
    items = [[g[i] for g in grids] for grids in zs_all for i in range(grids[0].shape[0])]
    if m.arm is not None:
        arm_bits = sum(m.arm.code_length_bits(
            [[g[i] for g in grids] for i in range(grids[0].shape[0])]) for grids in zs_all)
    print(f"lam {lam}: items {len(items)}, ARM bits {arm_bits:.0f}")
    for lv in range(m.config.levels):
        z = np.concatenate([grids[lv][1:].reshape(-1) for grids in zs_all])
        prev = np.concatenate([np.clip(grids[lv][:-1], -2, 2).reshape(-1) for grids in zs_all])
        nb = np.concatenate([np.clip(np.pad(grids[lv], ((0, 0), (0, 0), (1, 0)))[1:, :, :-1], -2, 2).reshape(-1) for grids in zs_all])
        h0 = H(np.zeros((z.size, 1)), z); h1 = H(nb[:, None], z); h2 = H(np.stack([nb, prev], 1), z)
        print(f"  level {lv} n {z.size} nonzero {np.count_nonzero(z)}: H {h0:.0f} | left {h1:.0f} | left+prev {h2:.0f} bits "
              f"corr(z, prev) {np.corrcoef(z, prev)[0,1] if z.std() > 0 and prev.std() > 0 else 0:.2f}")
