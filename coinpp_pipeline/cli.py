"""Command line: ``python -m coinpp_pipeline {quickstart,train,info}``."""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from .config import ModelConfig, TrainConfig
from .metalearning import meta_train
from .metrics import bits_per_value, max_abs_error, psnr
from .model import Model
from .sources import SAMPLE_ERA5, expand, load_variable


def _quickstart(args: argparse.Namespace) -> int:
    """Meta-train on the shipped ERA5 sample (first 5 days), compress the held-out last 2."""
    files = expand(args.data)
    train = load_variable(files[:5], args.var)
    test = load_variable(files[5:], args.var)
    print(f"[quickstart] {args.var}: meta-training on {train.shape[0]} fields "
          f"({len(files[:5])} daily files), compressing {test.shape[0]} held-out fields")
    cfg = ModelConfig(grid="latlon", patch_shape=(16, 16), coords="both", depth=4, width=64,
                      latent_dim=16, bits=6)
    tcfg = TrainConfig(steps=args.steps, batch_size=64, outer_lr=1e-3, first_order=True,
                       val_every=max(args.steps // 5, 1))
    t0 = time.perf_counter()
    model = meta_train(train, cfg, tcfg, callback=lambda s, m: print(
        f"  step {s:4d}  loss {m['train_loss']:.4f}  {m['time_s']:.0f}s", flush=True))
    print(f"[quickstart] meta-trained in {time.perf_counter() - t0:.0f} s")
    sha = model.save(args.model)
    print(f"[quickstart] model saved to {args.model} (sha256 {sha[:16]}…, {len(model.to_bytes())} bytes)")
    t = time.perf_counter()
    blob = model.encode(test)
    enc = time.perf_counter() - t
    back = Model.load(args.model, sha256=sha).decode(blob)
    print(f"[quickstart] held-out: {test.nbytes} bytes -> {len(blob)} bytes, ratio "
          f"{test.nbytes / len(blob):.1f}x ({bits_per_value(len(blob), test.size):.3f} bits/value), "
          f"PSNR {psnr(test, back):.2f} dB, max abs error {max_abs_error(test, back):.3f}, "
          f"encode {test.nbytes / 1e6 / enc:.2f} MB/s")
    return 0


def _train(args: argparse.Namespace) -> int:
    data = load_variable(expand(args.data), args.var)
    cfg = ModelConfig.from_dict(json.loads(args.config)) if args.config else ModelConfig()
    tcfg = TrainConfig(steps=args.steps)
    model = meta_train(data, cfg, tcfg, callback=lambda s, m: print(s, m, flush=True))
    print(model.save(args.out))
    return 0


def _info(args: argparse.Namespace) -> int:
    m = Model.load(args.model)
    print(json.dumps({"sha256": m.sha256, "config": m.config.to_dict(),
                      "bits": m.quantizer.bits if m.quantizer else None,
                      "mean": m.mean.tolist(), "std": m.std.tolist()}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m coinpp_pipeline")
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quickstart", help="meta-train on the shipped ERA5 sample and compress it")
    q.add_argument("--data", default=str(SAMPLE_ERA5))
    q.add_argument("--var", default="t2m")
    q.add_argument("--steps", type=int, default=300)
    q.add_argument("--model", default="runs/quickstart/t2m.coinpp")
    q.set_defaults(fn=_quickstart)
    t = sub.add_parser("train", help="meta-train a model on a NetCDF archive")
    t.add_argument("data")
    t.add_argument("--var", required=True)
    t.add_argument("--config", help="ModelConfig as JSON")
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--out", required=True, help="model URL (any fsspec URL)")
    t.set_defaults(fn=_train)
    i = sub.add_parser("info", help="describe a model file")
    i.add_argument("model")
    i.set_defaults(fn=_info)
    args = ap.parse_args(argv)
    np.set_printoptions(precision=4)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
