"""Time and profile one latent-grid encoder step (forward + backward) on a 181x360 field.

    python benchmarks/grid_step_profile.py

Prints ms per step at 1 and 2 torch threads, the step's FLOP count (MLP 7->32->32->1, 3x3
refinement, six bicubic upsamplings; forward + backward taken as 3x forward) and the
achieved GFLOP/s, then the torch profiler's top operators. The network is untrained
(timing does not depend on the weights).
"""

from __future__ import annotations

import time

import torch
from torch.profiler import ProfilerActivity, profile

from coinpp_pipeline.latent_grid import GridConfig, GridSynthesis

H, W = 181, 360


def main() -> None:
    torch.manual_seed(0)
    cfg = GridConfig(field_shape=(H, W))
    net = GridSynthesis(cfg)
    shapes = cfg.level_shapes((H, W))
    clim = torch.randn(1, 1, H, W)

    def step() -> None:
        zs = [torch.zeros(1, *s, requires_grad=True) for s in shapes]
        noisy = [z + torch.rand_like(z) - 0.5 for z in zs]
        rounded = [torch.round(z).detach() for z in zs]
        loss = (net(noisy, clim, (H, W)) ** 2).mean() + net.rate_bits(noisy, rounded).sum() / (H * W)
        loss.backward()

    h = cfg.hidden
    n_in = cfg.levels + 1
    flops = H * W * (2 * (n_in * h + h * h + h) + 18 + cfg.levels * 16 * 2) * 3
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for _ in range(3):
            step()
        t = time.perf_counter()
        for _ in range(10):
            step()
        dt = (time.perf_counter() - t) / 10
        print(f"threads {threads}: {dt * 1e3:.1f} ms/step, {flops / 1e9:.3f} GFLOP/step, "
              f"{flops / dt / 1e9:.1f} GFLOP/s")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


if __name__ == "__main__":
    main()
