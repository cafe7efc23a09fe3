"""The ERA5 model chain through the product's flows (session 29): ``meta-train`` with
``kind = "grid-chain"`` on the training split (the first 17 fields), then ``compress-archive``
of the 7 held-out fields (the last two files) with that model and the store's default chunking,
one store per rate weight. Prints the flow's time, the model, and each store's bytes, ratio,
PSNR and max error; ``--compare M`` also checks the model against another model file (the
same configuration and tensors, e.g. ``gpu_chain.sh``'s final model made with the same settings).

    PREFECT_SERVER_ANALYTICS_ENABLED=false .venv/bin/python benchmarks/flow_chain.py v10 \\
        --compare benchmarks/results/<gpu_chain run>/models/<final>.coinpp

Runs on a temporary local Prefect server; ≈ 45 min for the default 3000 steps on this 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coinpp_pipeline import checkpoints  # noqa: E402
from flows.compress_archive import compress_archive  # noqa: E402
from flows.meta_train import meta_train_flow  # noqa: E402

DATA = ROOT / "data" / "era5-1deg"
TRAIN_ITEMS = 17  # the first 5 files; benchmarks/datasets.py's training split


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variable", help="t2m | msl | u10 | v10")
    ap.add_argument("--steps", type=int, default=3000, help="training and fine-tuning steps")
    ap.add_argument("--chain", default="{}", help="other GridChainConfig settings, as JSON")
    ap.add_argument("--architecture", default="{}", help="GridConfig fields, as JSON (e.g. encode_steps)")
    ap.add_argument("--rate-weights", type=float, nargs="*", default=[0.3, 1.0],
                    help="one held-out store per rate weight (none: the model only)")
    ap.add_argument("--compare", default=None, metavar="MODEL", help="check the model against this model file")
    ap.add_argument("--out", default="benchmarks/results/flow_chain")
    args = ap.parse_args(argv)
    out = Path(args.out)
    t = time.perf_counter()
    m = meta_train_flow(source=str(DATA), variable=args.variable, output=f"{out}/models/", kind="grid-chain",
                        steps=args.steps, max_items=TRAIN_ITEMS, chain=json.loads(args.chain),
                        architecture=json.loads(args.architecture))
    print(f"meta-train: {time.perf_counter() - t:.1f} s, model {m['url']}", flush=True)
    if args.compare:
        diff = checkpoints.differences(checkpoints.read_bytes(m["url"]), checkpoints.read_bytes(args.compare))
        print(f"against {args.compare}: " + (f"differs in {diff}" if diff else "same configuration and tensors"))
    held_out = [str(p) for p in sorted(DATA.glob("*.nc"))[5:]]
    for lam in args.rate_weights:
        t = time.perf_counter()
        res = compress_archive(source=held_out, target=f"{out}/heldout_{args.variable}_{lam:g}.zarr",
                               variables=[args.variable], model=m["url"], rate_weight=lam)
        s = res["stats"][args.variable]
        print(f"compress-archive λ {lam:g}: {s['stored_bytes']} B, {s['ratio']:.2f}x, {s['psnr_db']:.3f} dB, "
              f"max error {s['max_abs_error']:.4g} ({time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
