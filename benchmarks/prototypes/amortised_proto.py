"""Prototype: an amortised initial guess for the grid encoder (fewer Adam steps for the same
rate-distortion).  A small analysis network (per level, coarse to fine: 3x3 convolutions on
the field pooled to the level's shape, the climatology pooled the same way, log10(lambda) and
the coarser level's guess) is trained on the training fields through the model's frozen
synthesis and rate proxy (MSE + lambda * bits, uniform noise for rounding).  The encoder then
starts from its guess instead of zeros.  Real chunk bytes through Model.encode (fit_grids is
patched to start from the guess), compared with the model's own encoder.

    python benchmarks/prototypes/amortised_proto.py --model M --dataset hadcm3 \
        --train-steps 1500 --lams 0.1 1 --steps 50 100 400
"""
import argparse, json, math, sys, time
from pathlib import Path
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
ROOT = Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import datasets  # noqa: E402
from rd_summary import interp  # noqa: E402
from coinpp_pipeline.grid_model import GridModel  # noqa: E402
import coinpp_pipeline.grid_model as gm  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--dataset", default="hadcm3")
ap.add_argument("--train-steps", type=int, default=1500)
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--channels", type=int, default=16)
ap.add_argument("--lams", type=float, nargs="+", default=[0.1, 1])
ap.add_argument("--steps", type=int, nargs="+", default=[50, 100, 400])
a = ap.parse_args()
torch.set_num_threads(2)
torch.manual_seed(0)
d = datasets.load(a.dataset)
m = GridModel.load(a.model)
net = m.network
for p in net.parameters():
    p.requires_grad_(False)
train = d.train.reshape(-1, *d.train.shape[-2:]).astype(np.float64)
hw = train.shape[1:]
shapes = m.config.level_shapes(hw)
clim = m._climatology()


class Analysis(nn.Module):
    def __init__(self, n_levels: int, c: int, has_clim: bool):
        super().__init__()
        n_in = 2 + (1 if has_clim else 0) + 1  # field, log lambda, [clim], coarser guess
        self.levels = nn.ModuleList(nn.Sequential(
            nn.Conv2d(n_in, c, 3, padding=1), nn.GELU(), nn.Conv2d(c, c, 3, padding=1), nn.GELU(),
            nn.Conv2d(c, 1, 3, padding=1)) for _ in range(n_levels))

    def forward(self, x: torch.Tensor, lam: torch.Tensor) -> list[torch.Tensor]:
        """x (B, H, W) normalised (0 where invalid), lam (B,) -> guesses finest first."""
        out: list[torch.Tensor] = [None] * len(shapes)  # type: ignore[list-item]
        prev = None
        for lv in reversed(range(len(shapes))):
            s = shapes[lv]
            feats = [F.adaptive_avg_pool2d(x[:, None], s)]
            feats.append(torch.log10(lam)[:, None, None, None].expand(-1, 1, *s))
            if clim is not None:
                feats.append(F.adaptive_avg_pool2d(clim, s).expand(x.shape[0], -1, -1, -1))
            feats.append(torch.zeros_like(feats[0]) if prev is None else
                         F.interpolate(prev[:, None], size=s, mode="bilinear", align_corners=False))
            z = self.levels[lv](torch.cat(feats, 1))[:, 0]
            out[lv] = z
            prev = z
        return out


A = Analysis(len(shapes), a.channels, clim is not None)
valid = np.isfinite(train)
xt = torch.from_numpy(np.where(valid, m._normalise(train), 0.0).astype(np.float32))
mt = torch.from_numpy(valid.astype(np.float32))
opt = torch.optim.Adam(A.parameters(), lr=2e-3)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.train_steps)
t0 = time.time()
for step in range(a.train_steps):
    bi = torch.randint(0, xt.shape[0], (a.batch,))
    lam = 10 ** (torch.rand(a.batch) * 3 - 1.5)  # 0.03 ... 30
    zs = A(xt[bi], lam)
    noisy = [z + torch.rand_like(z) - 0.5 for z in zs]
    rec = net(noisy, clim, hw)
    mse = (((rec - xt[bi]) ** 2) * mt[bi]).flatten(1).sum(1) / mt[bi].flatten(1).sum(1).clamp_min(1)
    bits = net.rate_bits(noisy, [torch.round(z).detach() for z in zs]) / (hw[0] * hw[1])
    loss = (mse + lam * bits).mean()
    opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    if step % max(a.train_steps // 5, 1) == 0 or step == a.train_steps - 1:
        print(f"  analysis step {step} mse {float(mse.mean().detach()):.4f} bpv {float(bits.mean().detach()):.4f} {time.time() - t0:.0f}s", flush=True)
for p in net.parameters():
    p.requires_grad_(True)

orig_fit = GridModel.fit_grids
state = {"lam": None, "init": True}


def fit_with_init(self, normed, valid, steps, rate_weight):
    if not state["init"]:
        return orig_fit(self, normed, valid, steps, rate_weight)
    with torch.no_grad():
        x = torch.from_numpy(np.where(valid, normed, 0.0).astype(np.float32))
        guess = A(x, torch.full((x.shape[0],), float(rate_weight)))
    real_zeros = torch.zeros

    def zeros(size, **kw):  # the encoder's latents start from the guess
        for g in guess:
            if isinstance(size, tuple) and tuple(size) == tuple(g.shape) and kw.get("requires_grad"):
                return g.clone().to(kw.get("device") or "cpu").requires_grad_(kw.get("requires_grad", False))
        return real_zeros(size, **kw)
    gm.torch.zeros = zeros
    try:
        if steps == 0:
            k = self.config.max_symbol
            return [torch.round(g).clamp(-k, k).long().numpy() for g in guess]
        return orig_fit(self, normed, valid, steps, rate_weight)
    finally:
        gm.torch.zeros = real_zeros


GridModel.fit_grids = fit_with_init
ref = ROOT / f"benchmarks/results/rd_compare_{a.dataset.replace(':', '_')}.json"
series: dict = {}
for r in json.loads(ref.read_text())["rows"]:
    series.setdefault(r["codec"], []).append((r["ratio"], r["psnr"]))
ref_x = np.concatenate([c.reshape(-1) for c in d.test_chunks]).astype(np.float64)
ok = np.isfinite(ref_x)
for lam in a.lams:
    for init in (True, False):
        for steps in (a.steps if init else [max(a.steps)]):
            state["init"] = init
            t = time.time()
            blobs = [m.encode(c, rate_weight=lam, steps=steps) for c in d.test_chunks]
            te = time.time() - t
            rec = np.concatenate([b.reshape(-1) for b in m.decode_many(blobs)])
            psnr = 20 * np.log10(d.range) - 10 * np.log10(np.mean((rec[ok] - ref_x[ok]) ** 2))
            ratio = d.raw_bytes / sum(map(len, blobs))
            sa = interp(series.get("SPERR bpp anomaly", []), ratio)
            print(f"lam {lam} {'guess' if init else 'zeros'} steps {steps}: ratio {ratio:.1f} psnr {psnr:.2f} "
                  f"vs SPERR-anom {'-' if sa is None else f'{psnr - sa:+.2f}'} encode {te:.1f}s", flush=True)
