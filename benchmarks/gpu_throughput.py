"""Throughput on the accelerator (or the CPU): meta-training steps/s, encode and decode MB/s.

    python benchmarks/gpu_throughput.py                      # cuda when present, else CPU
    python benchmarks/gpu_throughput.py --device cpu --steps 30 --batch 32 --grid-steps 20

Two model kinds: the patch model (meta-training steps/s at each ``--batch``, encode at 3 and
25 inner steps, decode) and the latent-grid model (training steps/s on whole 181x360
fields, encode at ``--grid-encode-steps`` Adam steps, decode; then fitting an analysis network
and encoding with its guess alone, ``steps=0``).

Sized to finish in well under 5 minutes on one GPU: a short timed meta-training run on the
ERA5 sample (first 5 days), then encode/decode of the 7 held-out fields, repeated, after a
warm-up. Prints one table; writes JSON to benchmarks/results/. The quality of the short run is
not the point (see era5_core.py for that); throughput is.

With ``--grid-model FILE`` (a trained t2m model, e.g. from ``grid_train.py``) it also times
that model on the device: training steps/s in its own configuration, then per
``--rate-weights`` lambda encoding the 7 held-out fields at its default step count (ratio and
PSNR printed, chunk bytes written to ``--out`` so they can be decoded on another machine:
``--check-blobs DIR`` decodes them here and compares) and ``--tile`` chunks of those fields
encoded at once (``Model.encode_many``: their fields share the encoder's batches; for a
time-chunked model, field t of every chunk).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from coinpp_pipeline import Model, ModelConfig, TrainConfig, meta_train
from coinpp_pipeline.grid_model import GridModel, GridTrainConfig, fit_analysis, train_grid_model
from coinpp_pipeline.latent_grid import GridConfig
from coinpp_pipeline.metalearning import pick_device
from coinpp_pipeline.metrics import psnr
from coinpp_pipeline.sources import SAMPLE_ERA5, list_sources, load_variable

T = TypeVar("T")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None)
    ap.add_argument("--steps", type=int, default=300, help="meta-training steps timed")
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--grid-steps", type=int, default=300, help="grid-model training steps timed")
    ap.add_argument("--grid-batch", type=int, default=6)
    ap.add_argument("--grid-encode-steps", type=int, default=200)
    ap.add_argument("--grid-analysis-steps", type=int, default=100,
                    help="analysis-network fitting steps timed (then encode with its guess alone, steps=0)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--grid-model", default=None, help="a trained ERA5 latent-grid model file to time")
    ap.add_argument("--variable", default="t2m", choices=["t2m", "msl", "u10", "v10"],
                    help="the ERA5 variable the --grid-model was trained on (the base rows use t2m)")
    ap.add_argument("--rate-weights", type=float, nargs="+", default=[1.0, 3.0])
    ap.add_argument("--model-train-steps", type=int, default=100,
                    help="training steps timed in the --grid-model's configuration")
    ap.add_argument("--model-encode-steps", type=int, default=None,
                    help="encoder steps for the --grid-model (default: the model's)")
    ap.add_argument("--tile", type=int, default=4,
                    help="--grid-model: also encode the 7 held-out fields repeated this many times")
    ap.add_argument("--check-blobs", default=None,
                    help="decode the chunk bytes a --grid-model run wrote to this folder (on this "
                         "machine) and compare with what that run decoded")
    ap.add_argument("--skip-base", action="store_true", help="time only the --grid-model")
    args = ap.parse_args(argv)
    device = pick_device(args.device)
    files = list_sources(str(SAMPLE_ERA5))

    @functools.cache
    def era5(var: str) -> tuple[np.ndarray, np.ndarray]:
        """The ERA5 sample's training (first 5 days) and 7 held-out fields of ``var``."""
        return load_variable(files[:5], var), load_variable(files[5:], var)

    if args.check_blobs:
        return check_blobs(args, era5(args.variable)[1])
    rows = [] if args.skip_base else base_rows(args, device, *era5("t2m"))
    if args.grid_model:
        rows += model_rows(args, device, *era5(args.variable))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    what = [] if args.skip_base else [f"patch model {args.depth}x{args.width}, 16x16 patches, t2m"]
    what += [f"grid model {Path(args.grid_model).name}, {args.variable}"] if args.grid_model else []
    print(f"device: {name}; {'; '.join(what)}; (7, 181, 360) held-out")
    for r in rows:
        print(f"  {r['what']:<62} {r['value']:>10.2f} {r['unit']}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"device": name, "args": vars(args), "rows": rows}
    (out / f"gpu_throughput_{device.type}.json").write_text(json.dumps(result, indent=1))
    return result


def _timed(device: torch.device, fn: Callable[..., T], *a: Any, **kw: Any) -> tuple[T, float]:
    """``fn(*a, **kw)`` and its wall time in seconds, the device synchronised before and after."""
    _sync(device)
    t = time.perf_counter()
    out = fn(*a, **kw)
    _sync(device)
    return out, time.perf_counter() - t


def load_grid_model(path: str) -> GridModel:
    model = Model.load(path)
    if not isinstance(model, GridModel):
        raise SystemExit(f"{path}: a {type(model).__name__}, not a latent-grid model")
    return model


def model_rows(args: argparse.Namespace, device: torch.device, train: np.ndarray, test: np.ndarray) -> list[dict]:
    """Time a trained latent-grid model: training steps/s in its configuration, encode and
    decode of the held-out fields per rate weight (bytes and decoded fields saved)."""
    gm = load_grid_model(args.grid_model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    mb = test.nbytes / 1e6
    if args.model_train_steps:
        tc = GridTrainConfig(steps=args.model_train_steps, batch=6, device=str(device),
                             log_every=args.model_train_steps)
        # trained without its basis (added afterwards by grid_train.py, as for the t2m models)
        _, s = _timed(device, train_grid_model, train, dataclasses.replace(gm.config, basis=0), tc)
        rows.append({"what": "the model's configuration: train, batch 6 fields",
                     "value": args.model_train_steps / s, "unit": "steps/s"})
        print(rows[-1], flush=True)
    gm.to(str(device))
    gm.encode(test[:1], steps=5)  # warm-up
    steps = args.model_encode_steps or gm.config.encode_steps
    for lam in args.rate_weights:
        blob, s = _timed(device, gm.encode, test, rate_weight=lam, steps=steps)
        dec, sd = _timed(device, gm.decode, blob)
        ratio = test.nbytes / len(blob)
        rows.append({"what": f"model: encode 7 fields, {steps} steps, lambda {lam:g} "
                             f"({ratio:.1f}x, {psnr(test, dec):.2f} dB)", "value": mb / s, "unit": "MB/s"})
        rows.append({"what": f"model: decode, lambda {lam:g}", "value": mb / sd, "unit": "MB/s"})
        print(rows[-2], rows[-1], flush=True)
        (out / f"{args.variable}_lam{lam:g}.chunk").write_bytes(blob)
        np.save(out / f"{args.variable}_lam{lam:g}_decoded.npy", dec.astype(np.float32))
    # ``--tile`` chunks of the 7 fields at once, as zarr hands a batch of chunks to the codec
    # (Model.encode_many: their fields share the encoder's batches; field t of every chunk for a
    # model with the previous-field predictor or the ARM's item context)
    blobs, s = _timed(device, gm.encode_many, [test] * args.tile, rate_weight=args.rate_weights[0], steps=steps)
    ratio = args.tile * test.nbytes / sum(map(len, blobs))
    rows.append({"what": f"model: encode {args.tile} chunks of 7 fields at once, {steps} steps ({ratio:.1f}x)",
                 "value": args.tile * mb / s, "unit": "MB/s"})
    print(rows[-1], flush=True)
    return rows


def check_blobs(args: argparse.Namespace, test: np.ndarray) -> dict:
    """Decode chunk bytes another machine wrote (``model_rows``) with ``--grid-model`` here;
    compare with the fields that machine decoded."""
    gm = load_grid_model(args.grid_model).to(args.device or "cpu")
    result = {}
    for chunk in sorted(Path(args.check_blobs).glob(f"{args.variable}_lam*.chunk")):
        dec = gm.decode(chunk.read_bytes())
        theirs = np.load(chunk.with_name(chunk.stem + "_decoded.npy")).astype(np.float64)
        diff = float(np.abs(dec - theirs).max())
        result[chunk.name] = {"ratio": test.nbytes / chunk.stat().st_size, "psnr_here": psnr(test, dec),
                              "psnr_there": psnr(test, theirs), "max_abs_diff": diff}
        print(f"{chunk.name}: {result[chunk.name]}")
    return result


def base_rows(args: argparse.Namespace, device: torch.device, train: np.ndarray, test: np.ndarray) -> list[dict]:
    """The patch model and an untrained-configuration latent-grid model, trained briefly."""
    cfg = ModelConfig(grid="latlon", patch_shape=(16, 16), coords="both", depth=args.depth,
                      width=args.width, latent_dim=16, bits=6)
    rows = []
    model = None
    for batch in args.batch:
        tc = TrainConfig(steps=args.steps, batch_size=batch, outer_lr=1e-3, first_order=True,
                         val_every=args.steps, device=str(device))
        model, s = _timed(device, meta_train, train, cfg, tc)
        rows.append({"what": f"meta-train batch {batch} (incl. 1 validation + coding fit)",
                     "value": args.steps / s, "unit": "steps/s"})
    assert model is not None
    model.to(str(device))
    mb = test.nbytes / 1e6
    n = args.repeats
    blob = b""
    for steps in (3, 25):
        model.encode(test[:1], steps=steps)  # warm-up
        blobs, s = _timed(device, lambda st=steps: [model.encode(test, steps=st) for _ in range(n)])
        blob = blobs[-1]
        rows.append({"what": f"encode, {steps} inner steps", "value": mb * n / s, "unit": "MB/s"})
    model.decode(blob)
    _, s = _timed(device, lambda: [model.decode(blob) for _ in range(n)])
    rows.append({"what": "decode", "value": mb * n / s, "unit": "MB/s"})

    # latent-grid model
    tc_g = GridTrainConfig(steps=args.grid_steps, batch=args.grid_batch, device=str(device),
                           log_every=max(args.grid_steps, 1))
    gmodel, s = _timed(device, train_grid_model, train, GridConfig(encode_steps=args.grid_encode_steps), tc_g)
    rows.append({"what": f"grid model: train, batch {args.grid_batch} fields (incl. table fit)",
                 "value": args.grid_steps / s, "unit": "steps/s"})
    gmodel.to(str(device))
    gmodel.encode(test[:1], steps=5)  # warm-up
    gblob, s = _timed(device, gmodel.encode, test)
    rows.append({"what": f"grid model: encode, {args.grid_encode_steps} steps", "unit": "MB/s", "value": mb / s})
    gmodel.decode(gblob)
    _, s = _timed(device, lambda: [gmodel.decode(gblob) for _ in range(n)])
    rows.append({"what": "grid model: decode", "value": mb * n / s, "unit": "MB/s"})
    if args.grid_analysis_steps:
        amodel, s = _timed(device, fit_analysis, gmodel, train, steps=args.grid_analysis_steps, batch=4)
        rows.append({"what": "grid model: fit analysis network, batch 4 fields", "unit": "steps/s",
                     "value": args.grid_analysis_steps / s})
        amodel.encode(test[:1], steps=0)  # warm-up
        _, s = _timed(device, amodel.encode, test, steps=0)
        rows.append({"what": "grid model: encode, analysis guess alone (steps=0)", "unit": "MB/s", "value": mb / s})
    for r in rows:
        print(r, flush=True)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
