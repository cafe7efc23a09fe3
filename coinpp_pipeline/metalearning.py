"""Meta-learning (MAML over the latents) and the inner loop shared with encoding."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from . import checkpoints
from .config import ModelConfig, TrainConfig
from .coordinates import PatchLayout, patch_coordinates, patchify, split_items
from .network import ModulatedSiren

if TYPE_CHECKING:
    from .model import Model

log = logging.getLogger(__name__)


def patch_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked MSE per patch: ``pred, target (P, N, C)``, ``mask (P, N)`` -> ``(P,)``."""
    m = mask.to(pred.dtype).unsqueeze(-1)
    se = ((pred - target) ** 2 * m).sum(dim=(1, 2))
    return se / (m.sum(dim=(1, 2)) * pred.shape[-1]).clamp_min(1.0)


def fit_latents(
    net: ModulatedSiren,
    coords: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    steps: int,
    mode: Literal["encode", "first", "second"] = "encode",
) -> torch.Tensor:
    """Inner loop: ``steps`` SGD steps on the latents from zero, θ held fixed.

    ``coords (P or 1, N, F)``, ``target (P, N, C)``, ``mask (P, N)`` -> latents ``(P, L)``.
    The loss is the per-patch masked MSE summed over patches, so each patch's update does
    not depend on how many patches share the batch. ``mode``: ``"second"`` keeps the whole
    inner loop differentiable w.r.t. θ (second-order MAML); ``"first"`` detaches the inner
    gradients (first-order MAML; meta-SGD rates still get gradients); ``"encode"`` returns
    detached latents.
    """
    z = torch.zeros(target.shape[0], net.config.latent_dim, device=target.device, requires_grad=True)
    lr = net.inner_lr
    for _ in range(steps):
        loss = patch_mse(net(coords, z), target, mask).sum()
        (g,) = torch.autograd.grad(loss, z, create_graph=mode == "second")
        if mode == "encode":
            with torch.no_grad():
                z = (z - lr * g).requires_grad_(True)
        else:
            z = z - lr * (g if mode == "second" else g.detach())
            if not z.requires_grad:
                z.requires_grad_(True)
    return z.detach() if mode == "encode" else z


def pick_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class PatchSet:
    """All patches of a set of equally shaped items, ready for batching.

    ``values (M, N, C)`` normalised, ``mask (M, N)``, ``coords (P, N, F)`` shared by items;
    patch ``m`` uses ``coords[m % P]``. Patches without any valid point are dropped.
    """

    def __init__(self, items: np.ndarray, config: ModelConfig, mean: np.ndarray, std: np.ndarray) -> None:
        b = items.shape[0]
        self.layout = PatchLayout.for_shape(items.shape[1:-1], config)
        normed = (items.astype(np.float32) - mean) / std
        values, mask = patchify(normed, self.layout)
        keep = mask.any(axis=1)
        self.index = np.nonzero(keep)[0]
        self.values = torch.from_numpy(values[keep])
        self.mask = torch.from_numpy(mask[keep])
        self.coords = torch.from_numpy(patch_coordinates(self.layout, config))
        self.n_items = b

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def batch(self, idx: np.ndarray | torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        p = torch.as_tensor(self.index[idx_t.numpy()] % self.layout.n_patches, dtype=torch.long)
        return (
            self.coords[p].to(device),
            self.values[idx_t].to(device),
            self.mask[idx_t].to(device),
        )


def _as_items(data: np.ndarray | Sequence[np.ndarray], config: ModelConfig) -> np.ndarray:
    arrays = [data] if isinstance(data, np.ndarray) else list(data)
    items = [split_items(np.asarray(a), config)[0] for a in arrays]
    shapes = {it.shape[1:] for it in items}
    if len(shapes) != 1:
        raise ValueError(f"training arrays must share one spatial shape, got {sorted(shapes)}")
    return np.concatenate(items, axis=0)


def evaluate_psnr(net: ModulatedSiren, patches: PatchSet, steps: int, device: torch.device, batch: int = 256) -> float:
    """Mean PSNR (dB) over patches after ``steps`` inner steps, in normalised units where the
    per-patch peak is the normalised data's range."""
    mses = []
    for start in range(0, len(patches), batch):
        idx = np.arange(start, min(start + batch, len(patches)))
        coords, values, mask = patches.batch(idx, device)
        with torch.enable_grad():
            z = fit_latents(net, coords, values, mask, steps)
        with torch.no_grad():
            mses.append(patch_mse(net(coords, z), values, mask).cpu())
    mse = float(torch.cat(mses).mean())
    return -10.0 * math.log10(max(mse, 1e-20))


def meta_train(
    data: np.ndarray | Sequence[np.ndarray],
    config: ModelConfig,
    train: TrainConfig | None = None,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    initial_state: dict[str, Any] | None = None,
    checkpoint_url: str | None = None,
    checkpoint_every: int = 0,
) -> Model:
    """Meta-learn a COIN++ model on ``data``.

    Args:
        data: array(s) of shape ``(*items, *spatial[, C])`` (see :class:`ModelConfig`); NaN
            marks missing points, which are ignored by every loss.
        config: architecture and coding parameters.
        train: outer-loop settings (steps, batch, lr, validation split, seed, device).
        callback: called as ``callback(step, metrics)`` after every validation.
        initial_state: ``{"network": state_dict}`` to start from (fine-tuning).
        checkpoint_url: fsspec URL of a resumable training checkpoint. If it exists, training
            resumes from it (same data and settings assumed); it is rewritten every
            ``checkpoint_every`` steps and at the end.
    Returns:
        A fitted :class:`~coinpp_pipeline.model.Model` (best validation checkpoint, with
        normalisation, quantizer and entropy model fitted on the training items).
    """
    from .model import Model, fit_coding

    train = train or TrainConfig()
    device = pick_device(train.device)
    torch.manual_seed(train.seed)
    rng = np.random.default_rng(train.seed)
    items = _as_items(data, config)
    n = items.shape[0]
    n_val = int(round(n * train.val_fraction)) if n > 1 else 0
    perm = rng.permutation(n)
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    train_items = items[train_idx]
    flat = train_items.reshape(-1, config.channels)
    finite = np.isfinite(flat)
    if not finite.any(axis=0).all():
        raise ValueError("a channel has no finite training values")
    mean = np.array([flat[finite[:, c], c].mean() for c in range(config.channels)], np.float32)
    std = np.array([flat[finite[:, c], c].std() for c in range(config.channels)], np.float32)
    std = np.where(std > 0, std, 1.0).astype(np.float32)

    train_set = PatchSet(train_items, config, mean, std)
    val_set = PatchSet(items[val_idx], config, mean, std) if n_val else None
    if len(train_set) == 0:
        raise ValueError("no training patch has a valid (finite) point")

    net = ModulatedSiren(config).to(device)
    if initial_state is not None:
        net.load_state_dict(initial_state["network"])
    opt = torch.optim.Adam(net.parameters(), lr=train.outer_lr)
    lr_at = (
        (lambda s: train.outer_lr * 0.5 * (1 + math.cos(math.pi * s / max(train.steps, 1))))
        if train.lr_decay == "cosine"
        else (lambda s: train.outer_lr)
    )
    lr_scale = 1.0
    best_state = copy.deepcopy(net.state_dict())
    best_val, best_step = -math.inf, 0
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    running = 0.0
    first_step = 1
    if checkpoint_url and checkpoints.exists(checkpoint_url):
        best_state, info = checkpoints.load_train_state(checkpoint_url, net, opt)
        first_step = int(info["step"]) + 1
        best_val, best_step, lr_scale = float(info["best_val"]), int(info["best_step"]), float(info["lr_scale"])
        history = list(info["history"])
        rng.bit_generator.state = info["numpy_rng"]
        log.info("resumed meta-training from %s at step %d", checkpoint_url, first_step)

    def save_checkpoint(step: int) -> None:
        if checkpoint_url:
            info = {"step": step, "best_val": best_val, "best_step": best_step, "lr_scale": lr_scale,
                    "history": history, "numpy_rng": rng.bit_generator.state}
            checkpoints.save_train_state(checkpoint_url, net, opt, best_state, info)

    for step in range(first_step, train.steps + 1):
        idx = rng.integers(0, len(train_set), size=min(train.batch_size, len(train_set)))
        coords, values, mask = train_set.batch(idx, device)
        mode: Literal["first", "second"] = "first" if train.first_order else "second"
        z = fit_latents(net, coords, values, mask, config.inner_steps, mode=mode)
        loss = patch_mse(net(coords, z), values, mask).mean()
        for group in opt.param_groups:
            group["lr"] = lr_at(step) * lr_scale
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            lr_scale *= 0.5
            net.load_state_dict(best_state)
            log.warning("step %d: non-finite loss; restored best checkpoint, lr x%.3g", step, lr_scale)
            continue
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), train.grad_clip)
        opt.step()
        with torch.no_grad():
            if config.meta_sgd:
                net.inner_lr.clamp_(min=0.0)
        running += float(loss.detach())
        if step % train.val_every == 0 or step == train.steps:
            k = step % train.val_every or train.val_every
            metrics = {"step": float(step), "train_loss": running / k, "time_s": time.perf_counter() - t0}
            running = 0.0
            eval_set = val_set if val_set is not None and len(val_set) else train_set
            psnr = evaluate_psnr(net, eval_set, config.inner_steps, device)
            metrics["val_psnr"] = psnr
            history.append(metrics)
            if psnr > best_val:
                best_val, best_step = psnr, step
                best_state = copy.deepcopy(net.state_dict())
            elif not math.isfinite(psnr) or psnr < best_val - train.divergence_factor:
                lr_scale *= 0.5
                net.load_state_dict(best_state)
                log.warning("step %d: validation diverged (%.2f dB); restored best", step, psnr)
            log.info("step %d loss %.5f val %.2f dB", step, metrics["train_loss"], psnr)
            if callback is not None:
                callback(step, metrics)
        if checkpoint_every and step % checkpoint_every == 0:
            save_checkpoint(step)
    if first_step <= train.steps:
        save_checkpoint(train.steps)
    net.load_state_dict(best_state)
    net.eval()
    report = {
        "history": history,
        "best_val_psnr_normalised": best_val if history else None,
        "best_step": best_step,
        "train_items": int(len(train_idx)),
        "val_items": int(n_val),
        "train_seconds": time.perf_counter() - t0,
        "device": str(device),
        "train_config": {k: v for k, v in train.__dict__.items() if k != "extra"},
    }
    model = Model(config, net.cpu(), mean, std, quantizer=None, entropy=None, report=report)
    fit_coding(model, train_items if config.channels > 1 else train_items[..., 0])
    return model
