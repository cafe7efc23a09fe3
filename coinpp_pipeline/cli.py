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
from .sources import SAMPLE_ERA5, list_sources, load_variable


def _quickstart(args: argparse.Namespace) -> int:
    """The pipeline on the shipped ERA5 sample, through the Prefect flows: meta-train on the
    first 5 daily files, compress the held-out last 2 into a Zarr store, read it back."""
    import shutil
    from pathlib import Path

    import xarray as xr

    from flows.compress_archive import compress_archive
    from flows.meta_train import meta_train_flow

    files = list_sources(args.data)
    out = Path(args.out)
    target = out / "era5-heldout.zarr"
    shutil.rmtree(target, ignore_errors=True)
    print(f"[quickstart] meta-train flow: {args.var} on {len(files[:5])} daily files ({args.steps} steps)")
    t0 = time.perf_counter()
    trained = meta_train_flow(
        source=files[:5], variable=args.var, output=f"{out / 'models'}/", steps=args.steps,
        architecture={"grid": "latlon", "patch_shape": [16, 16], "coords": "both", "depth": 4,
                      "width": 64, "latent_dim": 16, "bits": 6},
        checkpoint_every=0,
    )
    print(f"[quickstart] model {trained['sha256'][:16]}… in {time.perf_counter() - t0:.0f} s -> {trained['url']}")
    result = compress_archive(source=files[5:], target=str(target), variables=[args.var],
                              model=trained["url"], region_chunks=2)
    s = result["stats"][args.var]
    source = load_variable(files[5:], args.var)
    back = xr.open_zarr(str(target), consolidated=False)[args.var].values
    print(f"[quickstart] held-out {source.shape} {args.var}: {source.nbytes:,} bytes -> "
          f"{s['stored_bytes']:,} bytes stored, ratio {source.nbytes / s['stored_bytes']:.1f}x "
          f"({bits_per_value(s['stored_bytes'], source.size):.3f} bits/value)")
    print(f"[quickstart] read back with xr.open_zarr: PSNR {psnr(source, back):.2f} dB, "
          f"max abs error {max_abs_error(source, back):.3f} K; store at {target}")
    return 0


def _train(args: argparse.Namespace) -> int:
    data = load_variable(list_sources(args.data), args.var)
    if args.kind == "grid":
        from .grid_model import GridTrainConfig, train_grid_model
        from .latent_grid import GridConfig

        gcfg = GridConfig.from_dict(GridConfig().to_dict() | json.loads(args.config or "{}"))
        gmodel = train_grid_model(data, gcfg, GridTrainConfig(steps=args.steps), log=lambda r: print(r, flush=True))
        print(gmodel.save(args.out))
        return 0
    cfg = ModelConfig.from_dict(json.loads(args.config)) if args.config else ModelConfig()
    tcfg = TrainConfig(steps=args.steps)
    model = meta_train(data, cfg, tcfg, callback=lambda s, m: print(s, m, flush=True))
    print(model.save(args.out))
    return 0


def _info(args: argparse.Namespace) -> int:
    m = Model.load(args.model)
    from .grid_model import GridModel

    if isinstance(m, GridModel):
        print(json.dumps({"sha256": m.sha256, "kind": "grid", "config": m.config.to_dict(),
                          "mean": f"field {m.mean.shape}" if m.mean.ndim else float(m.mean),
                          "std": m.std.tolist()}, indent=1))
        return 0
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
    q.add_argument("--out", default="runs/quickstart")
    q.set_defaults(fn=_quickstart)
    t = sub.add_parser("train", help="train a model on a NetCDF archive")
    t.add_argument("data")
    t.add_argument("--var", required=True)
    t.add_argument("--kind", choices=["patch", "grid"], default="patch",
                   help="patch: COIN++ patch latents (default); grid: latent-grid model")
    t.add_argument("--config", help="ModelConfig (patch) or GridConfig (grid) fields as JSON")
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
