"""Core benchmark on the real ERA5 sample: meta-train on the first 5 days, encode the last 2.

    python benchmarks/era5_core.py --var t2m            # defaults: ~15-25 CPU minutes

Prints one table row per (bits, encode steps): bits per value counting every stored byte,
compression ratio vs float32, range-normalised PSNR and max abs error in original units,
encode/decode MB/s; plus model size and meta-training time. Only the 7 held-out fields
(2026-03-30 and 2026-03-31) are measured. Writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from coinpp_pipeline import ModelConfig, TrainConfig, meta_train
from coinpp_pipeline.bitstream import unpack
from coinpp_pipeline.coordinates import PatchLayout
from coinpp_pipeline.metrics import bits_per_value, max_abs_error, psnr
from coinpp_pipeline.model import with_bits
from coinpp_pipeline.sources import SAMPLE_ERA5, list_sources, load_variable


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--var", default="t2m")
    ap.add_argument("--data", default=str(SAMPLE_ERA5))
    ap.add_argument("--train-days", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--w0", type=float, default=30.0)
    ap.add_argument("--latent-dim", type=int, default=16)
    ap.add_argument("--patch", type=int, nargs=2, default=[16, 16])
    ap.add_argument("--coords", default="both", choices=["local", "global", "both"])
    ap.add_argument("--inner-steps", type=int, default=3)
    ap.add_argument("--second-order", action="store_true")
    ap.add_argument("--bits", type=int, nargs="+", default=[4, 5, 6, 8])
    ap.add_argument("--encode-steps", type=int, nargs="+", default=[3, 10, 25])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    files = list_sources(args.data)
    train = load_variable(files[: args.train_days], args.var)
    test = load_variable(files[args.train_days :], args.var)
    print(f"{args.var}: train {train.shape} from {len(files[: args.train_days])} files, "
          f"held-out {test.shape} from {len(files[args.train_days:])} files")

    cfg = ModelConfig(
        grid="latlon", patch_shape=tuple(args.patch), coords=args.coords, depth=args.depth,
        width=args.width, w0=args.w0, latent_dim=args.latent_dim, inner_steps=args.inner_steps,
        bits=args.bits[0],
    )
    tcfg = TrainConfig(steps=args.steps, batch_size=args.batch, outer_lr=args.lr,
                       first_order=not args.second_order, val_every=max(args.steps // 20, 1))

    def progress(step: int, m: dict) -> None:
        print(f"  step {step:5d}  loss {m['train_loss']:.5f}  val {m['val_psnr']:.2f} dB(norm)  "
              f"{m['time_s']:.0f}s", flush=True)

    t0 = time.perf_counter()
    base = meta_train(train, cfg, tcfg, callback=progress)
    train_s = time.perf_counter() - t0
    mean_field = train.mean(axis=0, keepdims=True)
    print(f"meta-training {train_s:.0f} s; held-out PSNR of the training mean alone: "
          f"{psnr(test, np.broadcast_to(mean_field, test.shape)):.2f} dB")

    rows = []
    raw_mb = test.nbytes / 1e6
    for bits in args.bits:
        model = base if bits == base.config.bits else with_bits(base, train, bits)
        model_bytes = len(model.to_bytes())
        for es in args.encode_steps:
            t = time.perf_counter()
            blob = model.encode(test, steps=es)
            enc_s = time.perf_counter() - t
            t = time.perf_counter()
            out = model.decode(blob)
            dec_s = time.perf_counter() - t
            # Real bytes vs the ideal code length of the same symbols (read back from the
            # chunk, so the encoder's work is not repeated) under the same model.
            payload_bytes = unpack(blob).sections["L"]
            n_patches = test.shape[0] * PatchLayout.for_shape(test.shape[-2:], model.config).n_patches
            symbols = model.entropy.decompress(payload_bytes, n_patches)
            ideal_bits = model.entropy.cross_entropy_bits(symbols)
            payload = len(payload_bytes)
            rows.append({
                "bits": bits, "encode_steps": es, "bytes": len(blob),
                "bpv": bits_per_value(len(blob), test.size), "ratio": test.nbytes / len(blob),
                "psnr": psnr(test, out), "max_abs_err": max_abs_error(test, out),
                "enc_MBps": raw_mb / enc_s, "dec_MBps": raw_mb / dec_s, "model_bytes": model_bytes,
                "latent_payload_bytes": payload, "ideal_latent_bytes": ideal_bits / 8,
                "coder_overhead_pct": 100 * (8 * payload / ideal_bits - 1) if ideal_bits else 0.0,
            })
    hdr = (f"{'bits':>4} {'steps':>5} {'bytes':>8} {'bpv':>7} {'ratio':>7} {'PSNR dB':>8} {'maxerr':>8} "
           f"{'enc MB/s':>9} {'dec MB/s':>9} {'coder +%':>8}")
    print(hdr)
    for r in rows:
        print(f"{r['bits']:>4} {r['encode_steps']:>5} {r['bytes']:>8} {r['bpv']:>7.4f} {r['ratio']:>7.1f} "
              f"{r['psnr']:>8.2f} {r['max_abs_err']:>8.3f} {r['enc_MBps']:>9.3f} {r['dec_MBps']:>9.2f} "
              f"{r['coder_overhead_pct']:>8.2f}")
    print("coder +% = real entropy-coded latent bytes over the ideal cross-entropy of the same symbols; "
          "bytes include the chunk header, mask and CRC")
    print(f"model file: {rows[0]['model_bytes']} bytes (amortised over the archive, not counted above); "
          f"meta-training: {train_s:.0f} s on {torch.get_num_threads()} threads")
    result = {"args": vars(args), "train_seconds": train_s, "rows": rows,
              "mean_field_psnr": psnr(test, np.broadcast_to(mean_field, test.shape)),
              "report": base.report.get("best_val_psnr_normalised")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"era5_core_{args.var}.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
