"""Where a latent-grid encoder step spends its time on a device (session 19: on the first H200
run an encoder step for 7 t2m fields took 36.7 ms, and the t2m model trained at 9.15 steps/s).

    python benchmarks/prototypes/gpu_step_profile.py --model M [--device cuda] [--steps 20]
    python benchmarks/prototypes/gpu_step_profile.py --model M --train [--steps 100]
    python benchmarks/prototypes/gpu_step_profile.py --model M --encode-sha

Times ``steps`` encoder steps on the 7 held-out t2m fields (one batch), then profiles them
(CPU + CUDA activities): top operators by self CPU time and by device time, and the count of
host-device copies and synchronisations per step. With ``--train``: the same for
``train_grid_model`` in the model's configuration (without its basis, as it was trained), batch
6, on the 17 training fields (its set-up and table fit included).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from coinpp_pipeline import Model
from coinpp_pipeline.grid_model import GridModel, GridTrainConfig, train_grid_model
from coinpp_pipeline.metalearning import pick_device
from coinpp_pipeline.sources import SAMPLE_ERA5, list_sources, load_variable


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rate-weight", type=float, default=1.0)
    ap.add_argument("--tile", type=int, default=1, help="the 7 fields repeated this many times")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matrix products / convolutions")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--encode-sha", action="store_true",
                    help="print the size and SHA-256 of the first 2 held-out fields encoded at 30 steps "
                         "(to check that a speed change leaves the chunk bytes alone)")
    args = ap.parse_args()
    device = pick_device(args.device)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    gm = Model.load(args.model).to(str(device))
    assert isinstance(gm, GridModel)
    files = list_sources(str(SAMPLE_ERA5))
    if args.train:
        train = load_variable(files[:5], "t2m")
        cfg = dataclasses.replace(gm.config, basis=0)

        def train_steps(steps: int) -> None:
            train_grid_model(train, cfg, GridTrainConfig(steps=steps, batch=6, device=str(device),
                                                         log_every=max(steps, 1)))

        measure(args, device, train_steps, "training step, batch 6 (set-up and table fit: one step alone)")
        return
    test = np.concatenate([load_variable(files[5:], "t2m")] * args.tile)
    if args.encode_sha:
        blob = gm.encode(test[:2], steps=30, rate_weight=args.rate_weight)
        print(f"encode 2 fields, 30 steps, lambda {args.rate_weight:g}: {len(blob)} B, "
              f"sha256 {hashlib.sha256(blob).hexdigest()[:16]}")
        return
    normed = gm._normalise(test)
    valid = np.isfinite(normed)
    measure(args, device, lambda steps: gm.fit_grids_coeffs(normed, valid, steps, args.rate_weight),
            f"encoder step, {len(test)} fields (encode_rate {gm.config.encode_rate!r}, "
            f"{gm.config.levels} levels, tf32 {args.tf32})")


def measure(args: argparse.Namespace, device: torch.device, run: Callable[[int], object], what: str) -> None:
    """Time ``run(steps)`` per step (after a warm-up; the difference of 1 and steps + 1 steps),
    then, unless ``--no-profile``, profile ``run(args.steps)`` and :func:`report` it."""

    def seconds(steps: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        run(steps)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    seconds(2)
    t0, t1 = seconds(1), seconds(args.steps + 1)
    print(f"{device}: {(t1 - t0) / args.steps * 1e3:.2f} ms per {what}; one step alone {t0 * 1e3:.1f} ms")
    if args.no_profile:
        return
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        run(args.steps)
    report(prof, device, args.steps)


def report(prof: profile, device: torch.device, steps: int) -> None:
    """Top operators by self CPU time (and device time), then copies / syncs / launches per step."""
    ka = prof.key_averages()
    print(ka.table(sort_by="self_cpu_time_total", row_limit=25))
    if device.type == "cuda":
        print(ka.table(sort_by="self_device_time_total", row_limit=15))
    for name in ("aten::item", "aten::_local_scalar_dense", "cudaStreamSynchronize", "cudaMemcpyAsync",
                 "aten::to", "aten::copy_", "cudaLaunchKernel"):
        n = sum(e.count for e in ka if e.key == name)
        print(f"{name:<28} {n / steps:10.1f} per step")


if __name__ == "__main__":
    main()
