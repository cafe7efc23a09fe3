"""A linear prior inside the grid model's encoder: the synthesis output plus ``c @ B``, where
``B`` holds the top-k principal components of the training anomalies (normalised units,
scaled to unit RMS per point) and ``c (k,)`` per field is fitted jointly with the latents and
stored as float16 (2k bytes, counted). No retraining. Prints, per rate weight, the held-out
ratio (real G bytes + 2k) and PSNR for k = 0 (the same loop without the term) and each k.

    python benchmarks/prototypes/pca_grid_proto.py --model M --dataset era5:t2m --lams 1 3 --ks 0 4 8
"""
import argparse, sys
from pathlib import Path
import numpy as np, torch
ROOT = Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import datasets  # noqa: E402
from coinpp_pipeline.model import Model  # noqa: E402
from coinpp_pipeline.grid_model import masked_mse, sga_temperature, soft_round_sga  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--dataset", default="era5:t2m")
ap.add_argument("--lams", type=float, nargs="+", default=[1.0, 3.0])
ap.add_argument("--ks", type=int, nargs="+", default=[0, 4, 8])
ap.add_argument("--steps", type=int, default=None)
a = ap.parse_args()
torch.set_num_threads(2)
d = datasets.load(a.dataset)
m = Model.from_bytes(open(a.model, "rb").read())
cfg = m.config
steps = a.steps or cfg.encode_steps
te = d.test.astype(np.float64).reshape(-1, *d.test.shape[-2:])
H, W = te.shape[-2:]
tr = d.train.astype(np.float64).reshape(-1, H, W)
A = ((tr - m.mean) / float(m.std[0])).reshape(len(tr), -1)
A = A - A.mean(0)
_, _, Vt = np.linalg.svd(A, full_matrices=False)
net = m.network
clim = m._climatology()


def encode(x: np.ndarray, lam: float, k: int):
    B = torch.from_numpy((Vt[:k] * np.sqrt(H * W)).reshape(k, H, W).astype(np.float32))
    xt = torch.from_numpy(x.astype(np.float32))[None]
    mask = torch.ones_like(xt)
    gen = torch.Generator().manual_seed(0)
    zs = [torch.zeros((1, *s), requires_grad=True) for s in cfg.level_shapes((H, W))]
    c0 = (xt.reshape(1, -1) @ B.reshape(k, -1).T) / (H * W) if k else torch.zeros(1, 0)
    c = c0.clone().requires_grad_(True)
    opt = torch.optim.Adam([*zs, c], lr=cfg.encode_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    n_noise = max(1, int(cfg.encode_noise_fraction * steps))
    for step in range(steps):
        rounded = [torch.round(z).detach() for z in zs]
        if step < n_noise:
            zq = [z + torch.rand(z.shape, generator=gen) - 0.5 for z in zs]
        else:
            zq = [soft_round_sga(z, sga_temperature(step - n_noise, steps - n_noise), gen) for z in zs]
        rec = net(zq, clim, (H, W)) + torch.einsum("bk,khw->bhw", c, B)
        loss = (masked_mse(rec, xt, mask) + lam * net.rate_bits(zq, rounded) / (H * W)).sum()
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    K = cfg.max_symbol
    grids = [torch.round(z.detach()).clamp(-K, K).long().numpy() for z in zs]
    cq = c.detach().numpy().astype(np.float16).astype(np.float32)
    with torch.no_grad():
        out = net([torch.from_numpy(g.astype(np.float32)) for g in grids], clim, (H, W)) + torch.einsum("bk,khw->bhw", torch.from_numpy(cq), B)
    rec = out[0].numpy().astype(np.float64) * float(m.std[0]) + m.mean
    nbytes = len(m.compress_grids([[g[0] for g in grids]])) + 2 * k + 8  # + a chunk header's worth
    return rec, nbytes


for lam in a.lams:
    for k in a.ks:
        err = 0.0; tot = 0
        for i in range(len(te)):
            x = (te[i] - m.mean) / float(m.std[0])
            rec, n = encode(x, lam, k)
            err += float(((rec - te[i]) ** 2).sum()); tot += n
        psnr = 20 * np.log10(d.range) - 10 * np.log10(err / te.size)
        print(f"lambda {lam:g} k {k}: {te.size * 4 / tot:.1f}x {psnr:.2f} dB ({tot / len(te):.0f} B/field)", flush=True)
