"""Prototype: stochastic Gumbel annealing (Yang et al. 2020) for the grid encoder vs noise+STE."""
import sys, time, math, argparse, numpy as np, torch
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import datasets
from coinpp_pipeline.model import Model
ap = argparse.ArgumentParser()
ap.add_argument("--model", default=str(ROOT / "benchmarks/results/models") + "/eaf46ec551ed8b076d861aee26f17833a48be703483796a2cddeeeeef55f50e9.coinpp")
ap.add_argument("--dataset", default="era5:t2m")
ap.add_argument("--mode", nargs="+", default=["ste", "sga"])
ap.add_argument("--lams", type=float, nargs="+", default=[1, 10])
ap.add_argument("--steps", type=int, default=200)
ap.add_argument("--lr", type=float, default=0.03)
ap.add_argument("--tau0", type=float, default=0.5)
ap.add_argument("--n", type=int, default=7)
ap.add_argument("--noise", type=float, default=0.5)
a = ap.parse_args()
torch.set_num_threads(2)
d = datasets.load(a.dataset)
m = Model.from_bytes(open(a.model, "rb").read())
te = d.test.astype(np.float64)[: a.n]
te = te.reshape(-1, *te.shape[-2:])
K = m.config.max_symbol

def fit(normed, valid, steps, lam, mode):
    shape = normed.shape[1:]
    shapes = m.config.level_shapes(shape)
    x = torch.from_numpy(np.where(valid, normed, 0).astype(np.float32))
    msk = torch.from_numpy(valid.astype(np.float32))
    count = msk.flatten(1).sum(1)
    zs = [torch.zeros((x.shape[0], *s), requires_grad=True) for s in shapes]
    opt = torch.optim.Adam(zs, lr=a.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(0)
    clim = m._climatology()
    n_noise = int(a.noise * steps) if mode == "sga" else int(0.7 * steps)
    for step in range(steps):
        rounded = [torch.round(z).detach() for z in zs]
        noisy = [z + torch.rand(z.shape, generator=gen) - 0.5 for z in zs]
        if step < n_noise:
            zq = noisy
            rz = noisy
        elif mode == "ste":
            zq = [z + (r - z).detach() for z, r in zip(zs, rounded)]
            rz = noisy
        else:
            frac_t = (step - n_noise) / max(steps - n_noise - 1, 1)
            tau = a.tau0 * (0.01 / a.tau0) ** frac_t
            zq = []
            for z in zs:
                fl = torch.floor(z).detach()
                r = (z - fl).clamp(1e-4, 1 - 1e-4)
                logits = torch.stack([-torch.atanh(r) / tau, -torch.atanh(1 - r) / tau], -1)
                g = -torch.log(-torch.log(torch.rand(logits.shape, generator=gen).clamp(1e-9, 1 - 1e-9)))
                w = torch.softmax(logits + g, -1)
                zq.append(fl + w[..., 1])
            rz = zq
        rec = m.network(zq, clim, shape)
        mse = (((rec - x) ** 2) * msk).flatten(1).sum(1) / count
        bits = m.network.rate_bits(rz, rounded)
        loss = (mse + lam * bits / (shape[0] * shape[1])).sum()
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    return [torch.round(z.detach()).clamp(-K, K).long().numpy() for z in zs]

for mode in a.mode:
    for lam in a.lams:
        t = time.time()
        normed = m._normalise(te); valid = np.isfinite(te)
        grids = fit(normed, valid, a.steps, lam, mode)
        rec = m.synthesize_grids(grids, te.shape[1:])
        nbytes = sum(len(m.tables.compress([[g[i] for g in grids]])) + 40 for i in range(te.shape[0]))
        psnr = 20 * np.log10(d.range) - 10 * np.log10(np.mean((rec - te) ** 2))
        print(f"{mode} lam {lam:g} ratio {te.size * d.raw_itemsize / nbytes:.1f} psnr {psnr:.2f} {time.time()-t:.0f}s", flush=True)
