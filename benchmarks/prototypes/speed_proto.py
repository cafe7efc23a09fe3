"""Encoder-step speed variants of GridSynthesis.forward (same maths, other kernels).

    python benchmarks/prototypes/speed_proto.py [--threads 1 2] [--batch 1]

``conv``: the session-10 forward (bicubic F.interpolate, 1x1 convolutions in NCHW);
``linear``: the MLP as matmuls on channels-last features; ``linear+sep``: also the bicubic
upsampling as two matmuls per level with precomputed 1-D interpolation matrices (what
``GridSynthesis.forward`` does since session 11); ``library``: the library's forward. Prints
ms per forward+backward step (181x360 field, default config) and the largest output difference.
"""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from coinpp_pipeline.latent_grid import GridConfig, GridSynthesis  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
ap.add_argument("--batch", type=int, default=1)
ap.add_argument("--shape", type=int, nargs=2, default=[181, 360])
ap.add_argument("--forward-only", action="store_true", help="time inference-mode forward passes (decoding)")
a = ap.parse_args()
H, W = a.shape
torch.manual_seed(0)
cfg = GridConfig(field_shape=(H, W))
net = GridSynthesis(cfg)
for p in net.parameters():
    p.data.normal_(0, 0.3)
shapes = cfg.level_shapes((H, W))
clim = torch.randn(1, 1, H, W)


def interp_matrix(n_in: int, n_out: int) -> torch.Tensor:
    eye = torch.eye(n_in).view(n_in, 1, n_in, 1)
    return F.interpolate(eye, size=(n_out, 1), mode="bicubic", align_corners=False)[:, 0, :, 0].T.contiguous()


mats = [(interp_matrix(h, H), interp_matrix(w, W)) for h, w in shapes]


def mlp_linear(feats_cl: torch.Tensor) -> torch.Tensor:
    m = net.mlp
    x = F.gelu(F.linear(feats_cl, m[0].weight.flatten(1), m[0].bias))
    x = F.gelu(F.linear(x, m[2].weight.flatten(1), m[2].bias))
    return F.linear(x, m[4].weight.flatten(1), m[4].bias)  # (B, H, W, 1)


def fwd(zs, variant):
    B = zs[0].shape[0]
    if variant == "library":
        return net(zs, clim, (H, W))
    if variant == "conv":
        ups = [F.interpolate(z[:, None], size=(H, W), mode="bicubic", align_corners=False) for z in zs]
        feats = torch.cat(ups + [clim.expand(B, -1, -1, -1)], 1)
        feats = feats * torch.cat([net.gain, torch.ones(1)])[None, :, None, None]
        out = net.mlp(feats)
        return (out + net.refine(out))[:, 0]
    if variant == "linear":
        ups = [F.interpolate(z[:, None], size=(H, W), mode="bicubic", align_corners=False)[:, 0] for z in zs]
    else:
        ups = [ah @ z @ aw.T for z, (ah, aw) in zip(zs, mats, strict=False)]
    feats = torch.stack(ups, -1) * net.gain
    feats = torch.cat([feats, clim[0, 0][None, :, :, None].expand(B, H, W, 1)], -1)
    out = mlp_linear(feats)[..., 0][:, None]
    out = out + net.refine(out)
    return out[:, 0]


def step(variant):
    if a.forward_only:
        with torch.inference_mode():
            fwd([torch.randn(a.batch, *s) for s in shapes], variant)
        return
    zs = [torch.randn(a.batch, *s, requires_grad=True) for s in shapes]
    loss = (fwd(zs, variant) ** 2).mean()
    loss.backward()


zs = [torch.randn(a.batch, *s) for s in shapes]
with torch.no_grad():
    ref = fwd(zs, "conv")
with torch.no_grad():
    for v in ("linear", "linear+sep", "library"):
        print(f"{v}: max |diff| vs conv {float((fwd(zs, v) - ref).abs().max()):.2e} (output std {float(ref.std()):.2f})")
for threads in a.threads:
    torch.set_num_threads(threads)
    for v in ("conv", "linear", "linear+sep", "library"):
        for _ in range(3):
            step(v)
        t = time.perf_counter()
        for _ in range(10):
            step(v)
        print(f"threads {threads} batch {a.batch} {v}: {(time.perf_counter() - t) / 10 * 1e3:.1f} ms/{'forward' if a.forward_only else 'step'}", flush=True)
