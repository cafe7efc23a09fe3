"""Where a grid model's quality saturates: held-out PSNR of latents fitted with no rate term
(lambda 0), (a) float latents never rounded, (b) rounded at the end (noise then annealing,
the library's encoder at lambda 0), each for STEPS Adam steps at LR. If (a) is far above the
model's high-rate points, the quantizer / encoder limits them; if not, the synthesis does.

    python benchmarks/prototypes/ceiling_proto.py --model M --dataset hadcm3 --steps 400 2000
"""
import argparse, sys
from pathlib import Path
import numpy as np, torch
ROOT = Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import datasets  # noqa: E402
from coinpp_pipeline.model import Model  # noqa: E402
from coinpp_pipeline.grid_model import masked_mse  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--dataset", default="hadcm3")
ap.add_argument("--steps", type=int, nargs="+", default=[400, 2000])
ap.add_argument("--lr", type=float, default=None)
ap.add_argument("--chunks", type=int, default=1)
a = ap.parse_args()
torch.set_num_threads(2)
d = datasets.load(a.dataset)
m = Model.from_bytes(open(a.model, "rb").read())
hw = m.config.field_shape or d.chunk_shape[-2:]
x = np.concatenate([c.reshape(-1, *hw) for c in d.test_chunks[: a.chunks]]).astype(np.float64)
ok = np.isfinite(x)
nx = torch.from_numpy(np.where(ok, m._normalise(x), 0).astype(np.float32))
mk = torch.from_numpy(ok.astype(np.float32))
clim = m._climatology()
std = float(m.std[0])
lr = a.lr or m.config.encode_lr
def psnr(rec_n):
    rec = rec_n.detach().numpy().astype(np.float64) * std + m.mean
    return 20 * np.log10(d.range) - 10 * np.log10(np.mean((rec[ok] - x[ok]) ** 2))
for steps in a.steps:
    zs = [torch.zeros((x.shape[0], *s), requires_grad=True) for s in m.config.level_shapes(hw)]
    k = m.config.basis  # a basis: its coefficients are fitted with the latents (float, never rounded)
    cf = torch.zeros((x.shape[0], k), requires_grad=True) if k else None
    opt = torch.optim.Adam(zs + ([cf] if k else []), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        loss = masked_mse(m.network(zs, clim, hw, cf), nx, mk).sum()
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    with torch.no_grad():
        pf = psnr(m.network(zs, clim, hw, cf))
        pr = psnr(m.network([torch.round(z) for z in zs], clim, hw, cf))
        amax = [float(z.abs().max()) for z in zs]
    grids, co = m.fit_fields_coeffs(m._normalise(x), ok, steps, 0.0)
    pe = psnr(torch.from_numpy(((m.synthesize_grids(grids, hw, co if k else None) - m.mean) / std).astype(np.float32)))
    print(f"steps {steps} lr {lr}: float {pf:.2f} dB, float rounded {pr:.2f}, encoder lambda 0 {pe:.2f}; "
          f"max |z| per level {[round(v, 1) for v in amax]}", flush=True)
