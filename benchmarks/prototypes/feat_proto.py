"""Prototype: learned per-location feature maps as extra synthesis inputs."""
import sys, time, math, argparse, numpy as np, torch, torch.nn.functional as F
from torch import nn
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import datasets
import coinpp_pipeline.grid_model as gm
from coinpp_pipeline import latent_grid as lg
ap = argparse.ArgumentParser()
ap.add_argument("--feat", type=int, default=0)
ap.add_argument("--feat-factor", type=int, default=2)
ap.add_argument("--steps", type=int, default=1000)
ap.add_argument("--hidden", type=int, default=32)
ap.add_argument("--lams", type=float, nargs="+", default=[1, 3, 10])
ap.add_argument("--dataset", default="era5:t2m")
ap.add_argument("--esteps", type=int, default=200)
ap.add_argument("--factors", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64])
ap.add_argument("--tlams", type=float, nargs="+", default=[0.3, 1, 3, 10, 30])
ap.add_argument("--save", default=None)
a = ap.parse_args()
torch.set_num_threads(2)

class FeatSynthesis(lg.GridSynthesis):
    def __init__(self, config):
        super().__init__(config)
        n_in = config.levels + (1 if config.climatology else 0) + a.feat
        h = config.hidden
        self.mlp = nn.Sequential(nn.Conv2d(n_in, h, 1), nn.GELU(), nn.Conv2d(h, h, 1), nn.GELU(), nn.Conv2d(h, 1, 1))
        H, W = config.field_shape
        f = a.feat_factor
        self.feat = nn.Parameter(torch.zeros(1, a.feat, math.ceil(H / f), math.ceil(W / f)))
    def forward(self, latents, clim, shape):
        mode = self.config.upsample
        ups = [F.interpolate(z[:, None], size=shape, mode=mode, align_corners=False) for z in latents]
        feats = torch.cat(ups, 1) * self.gain[None, :, None, None]
        feats = torch.cat([feats, clim.expand(feats.shape[0], -1, -1, -1)], 1)
        if a.feat:
            pf = F.interpolate(self.feat, size=shape, mode="bilinear", align_corners=False)
            feats = torch.cat([feats, pf.expand(feats.shape[0], -1, -1, -1)], 1)
        out = self.mlp(feats)
        if self.refine is not None:
            out = out + self.refine(out)
        return out[:, 0]

gm.GridSynthesis = FeatSynthesis
d = datasets.load(a.dataset)
train = d.train.reshape(-1, *d.train.shape[-2:])
cfg = lg.GridConfig(hidden=a.hidden, factors=tuple(a.factors), field_shape=train.shape[1:])
t = time.time()
model = gm.train_grid_model(train, cfg, gm.GridTrainConfig(steps=a.steps, rate_weights=tuple(a.tlams), log_every=a.steps // 5),
                            log=lambda r: print(r, flush=True))
print(f"trained {time.time()-t:.0f}s", flush=True)
if a.save and not a.feat: model.save(a.save)
te = d.test.astype(np.float64)
for lam in a.lams:
    blobs = [model.encode(te[i:i+1] if False else te, rate_weight=lam, steps=a.esteps)]
    nbytes = sum(len(b) for b in blobs)
    rec = model.decode_many(blobs)[0]
    psnr = 20*np.log10(d.range) - 10*np.log10(np.mean((rec - te)**2))
    print(f"feat {a.feat} lam {lam} ratio {te.size*4/nbytes:.1f} psnr {psnr:.2f}", flush=True)
