"""Fine-tune a basis model's synthesis on the task a held-out field poses: the latents code what
the basis leaves, where the basis was computed without the field and its neighbours.

A basis added after training (``grid_train.py --from-model M --basis K``) leaves the synthesis
as it was trained, on whole anomalies. Here each training field's target is its residual after
projection on a basis computed without it and its ``G`` neighbours on either side
(``grid_model._cross_fitted``, one pass per gap), and the network, the rate proxy and fresh
auto-decoder latents (one set per target and training rate weight) are trained on those
targets with ``train_grid_model``'s loss and schedule. The model keeps its basis and
coefficient coder; pooled tables are recounted from the new latents; no table sets / ARM
(add them with ``grid_train.py --from-model OUT --table-sets … --arm --cross-fit-gaps …``).

    python benchmarks/prototypes/basis_finetune_proto.py --model M --dataset era5:t2m --gaps 2 6 --steps 4000
"""
import argparse, copy, sys, time
from pathlib import Path
import numpy as np, torch
ROOT = Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import datasets  # noqa: E402
from coinpp_pipeline.grid_model import (GridModel, _cross_fitted, climatology_input, masked_mse,  # noqa: E402
                                        project_on_basis, sga_temperature, soft_round_sga)
from coinpp_pipeline.latent_grid import GridEntropyModel  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--dataset", default="era5:t2m")
ap.add_argument("--gaps", type=int, nargs="+", default=[2, 6])
ap.add_argument("--steps", type=int, default=4000)
ap.add_argument("--batch", type=int, default=6)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--latent-lr", type=float, default=3e-2)
ap.add_argument("--rate-weights", type=float, nargs="+", default=[0.3, 1, 3, 10, 30])
ap.add_argument("--sga-fraction", type=float, default=0.3)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--out", default=str(ROOT / "benchmarks/results"))
a = ap.parse_args()
torch.set_num_threads(2)
M = GridModel.load(a.model)
assert isinstance(M, GridModel) and M.config.basis, "needs a grid model with a basis"
ds = datasets.load(a.dataset)
x = ds.train.reshape(-1, *ds.train.shape[-2:]).astype(np.float64)
valid = np.isfinite(x)
normed = np.where(valid, M._normalise(x), 0.0)
hw = x.shape[1:]
targets = []
for g in a.gaps:
    for m, f in _cross_fitted(M, normed, valid, gap=g):
        t = torch.from_numpy(normed[f].astype(np.float32))
        b = m.network.basis
        with torch.no_grad():
            targets.append(t - torch.einsum("bk,khw->bhw", project_on_basis(t, b), b))
targets_t = torch.cat(targets)
mask_t = torch.from_numpy(np.concatenate([valid] * len(a.gaps)).astype(np.float32))
print(f"{len(targets_t)} targets ({len(x)} fields x gaps {a.gaps}); residual energy "
      f"{float((targets_t ** 2).mean()):.3f} (fields {float((normed ** 2).mean()):.3f})", flush=True)

net = copy.deepcopy(M.network).train()
k = M.config.basis
lams = torch.tensor([lam for _ in range(len(targets_t)) for lam in a.rate_weights])
item = torch.tensor([i for i in range(len(targets_t)) for _ in a.rate_weights])
latents = [torch.nn.Parameter(torch.zeros((len(item), *s))) for s in M.config.level_shapes(hw)]
opt = torch.optim.Adam([{"params": net.parameters(), "lr": a.lr}, {"params": latents, "lr": a.latent_lr}])
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.steps)
gen = torch.Generator().manual_seed(a.seed)
torch.manual_seed(a.seed)
clim = climatology_input(M.mean, torch.device("cpu"))
n_sga = int(a.sga_fraction * a.steps)
t0 = time.perf_counter()
for step in range(a.steps):
    bi = torch.randint(0, len(item), (min(a.batch, len(item)),), generator=gen)
    zs = [z[bi] for z in latents]
    noisy = [z + torch.rand(z.shape, generator=gen) - 0.5 for z in zs]
    rounded = [torch.round(z).detach() for z in zs]
    zq = noisy if step < a.steps - n_sga else [soft_round_sga(z, sga_temperature(step - (a.steps - n_sga), n_sga), gen)
                                               for z in zs]
    rec = net(zq, clim, hw, torch.zeros(len(bi), k))  # zero coefficients: the target is the residual
    mse = masked_mse(rec, targets_t[item[bi]], mask_t[item[bi]])
    bpv = net.rate_bits(noisy, rounded) / (hw[0] * hw[1])
    loss = (mse + lams[bi] * bpv).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    if step % max(a.steps // 10, 1) == 0 or step == a.steps - 1:
        print(f"  step {step:5d}  mse {float(mse.detach().mean()):.4f}  bpv {float(bpv.detach().mean()):.4f}  "
              f"{time.perf_counter() - t0:.0f}s", flush=True)
net.eval()
km = M.config.max_symbol
final = [torch.round(z.detach()).clamp(-km, km).long().numpy() for z in latents]
tables = GridEntropyModel.fit([[g[i] for g in final] for i in range(len(item))], km, M.config.contexts)
report = dict(M.report) | {"basis_finetune": {"from": M.sha256, "gaps": a.gaps, "steps": a.steps, "lr": a.lr,
                                              "rate_weights": a.rate_weights,
                                              "seconds": time.perf_counter() - t0}}
out = GridModel(M.config, net, M.mean, float(M.std[0]), tables, report, coeff_coder=M.coeff_coder)
path = Path(a.out) / "models" / f"{out.sha256}.coinpp"
path.parent.mkdir(parents=True, exist_ok=True)
out.save(str(path))
print(path)
