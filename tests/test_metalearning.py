"""Meta-learning: it helps on held-out data, is reproducible, and never returns a broken net."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from helpers import TINY, era5

from coinpp_pipeline import Model, ModelConfig, TrainConfig, meta_train
from coinpp_pipeline.metalearning import PatchSet, evaluate_psnr, fit_latents

CFG = ModelConfig(patch_shape=(8, 8), **TINY)


def _train_items() -> np.ndarray:
    """4 time steps of day 0 over one region: (4, 16, 24)."""
    return era5("t2m", 0)[:, 48:64, 8:32]


def _train(
    steps: int,
    data: np.ndarray | None = None,
    config: ModelConfig = CFG,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    **kw: object,
) -> Model:
    base: dict[str, object] = {"steps": steps, "batch_size": 8, "first_order": True,
                               "val_every": max(steps, 1), "val_fraction": 0.25, "outer_lr": 3e-3}
    train = TrainConfig(**(base | kw))  # type: ignore[arg-type]
    return meta_train(_train_items() if data is None else data, config, train, callback=callback)


def _psnr(model: Model, a: np.ndarray, steps: int) -> float:
    """PSNR (dB, peak = range of ``a``) of unquantized reconstructions after ``steps``."""
    latents, layout = model.fit_latents(a[..., None], steps)
    pred = model.synthesize(latents, layout)[..., 0]
    return 10 * math.log10(float(np.ptp(a)) ** 2 / float(np.mean((pred - a) ** 2)))


def _state(model: Model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.network.state_dict().items()}


@pytest.mark.slow
def test_meta_learning_beats_untrained_on_heldout_time_steps() -> None:
    train = era5("t2m", 0)[:, 40:72, 0:48]  # 4 time steps of day 0
    held_out = era5("t2m", 2)[:, 40:72, 0:48]  # the same region two days later
    untrained = _train(0, train)
    trained = _train(60, train, batch_size=16)
    steps = CFG.inner_steps
    before, after = _psnr(untrained, held_out, steps), _psnr(trained, held_out, steps)
    assert after > before + 2.0, (before, after)


def test_seeded_runs_are_identical() -> None:
    a, b = _train(4, seed=3), _train(4, seed=3)
    for (k, va), vb in zip(_state(a).items(), _state(b).values(), strict=True):
        torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=k)
    assert a.to_bytes() == b.to_bytes() and a.sha256 == b.sha256
    c = _train(4, seed=4)
    assert c.sha256 != a.sha256
    assert not torch.equal(_state(a)["last.weight"], _state(c)["last.weight"])


@pytest.mark.parametrize("first_order", [True, False])
def test_first_and_second_order_train(first_order: bool) -> None:
    init = _state(_train(0))
    model = _train(3, first_order=first_order)
    state = _state(model)
    assert all(torch.isfinite(v).all() for v in state.values())
    assert not torch.equal(state["hidden.0.weight"], init["hidden.0.weight"])
    assert model.report["best_step"] == 3


def test_second_order_gradients_reach_the_base_network() -> None:
    """The second-order inner loop is differentiable w.r.t. θ; first-order is not."""
    torch.manual_seed(0)
    from coinpp_pipeline.network import ModulatedSiren

    net = ModulatedSiren(CFG)
    weight = net.hidden[0].weight
    assert isinstance(weight, torch.Tensor)
    coords = torch.rand(1, 16, 2) * 2 - 1
    target, mask = torch.randn(2, 16, 1), torch.ones(2, 16, dtype=torch.bool)
    z2 = fit_latents(net, coords, target, mask, 2, mode="second")
    (g2,) = torch.autograd.grad(z2.sum(), weight, allow_unused=True)
    z1 = fit_latents(net, coords, target, mask, 2, mode="first")
    (g1,) = torch.autograd.grad(z1.sum(), weight, allow_unused=True)
    assert g2 is not None and g2.abs().sum() > 0
    assert g1 is None or g1.abs().sum() == 0
    assert not fit_latents(net, coords, target, mask, 2, mode="encode").requires_grad


def test_meta_sgd_learning_rates_change() -> None:
    model = _train(5)
    lr = model.network.inner_lr.detach()
    assert lr.shape == (CFG.latent_dim,)
    assert not torch.allclose(lr, torch.full_like(lr, CFG.inner_lr))
    assert (lr >= 0).all()
    fixed_cfg = ModelConfig(patch_shape=(8, 8), meta_sgd=False, **TINY)
    fixed = _train(5, config=fixed_cfg)
    torch.testing.assert_close(fixed.network.inner_lr, torch.full((CFG.latent_dim,), CFG.inner_lr))


def test_divergence_guard_huge_outer_lr() -> None:
    history: list[dict[str, float]] = []
    model = _train(12, outer_lr=1e6, lr_decay="none", val_every=3, callback=lambda s, m: history.append(m))
    state = _state(model)
    assert all(torch.isfinite(v).all() for v in state.values()), "NaN/inf weights returned"
    assert model.quantizer is not None and np.isfinite(model.quantizer.lo).all()
    a = era5("t2m", 1)[0, 48:64, 8:32]
    out = model.decode(model.encode(a))
    assert np.isfinite(out).all()
    best = model.report["best_val_psnr_normalised"]
    assert best is None or math.isfinite(best)


def test_best_checkpoint_is_returned() -> None:
    items = _train_items()
    history: list[dict[str, float]] = []
    seed = 5
    model = _train(12, outer_lr=0.05, lr_decay="none", val_every=2, seed=seed,
                   callback=lambda s, m: history.append(dict(m)))
    report = model.report
    assert [h["step"] for h in history] == [2, 4, 6, 8, 10, 12]
    best = max(history, key=lambda h: h["val_psnr"])
    assert report["best_step"] == best["step"]
    assert report["best_val_psnr_normalised"] == pytest.approx(best["val_psnr"])
    # Re-evaluate the returned network on the validation items: it is the best checkpoint.
    perm = np.random.default_rng(seed).permutation(items.shape[0])
    val = items[np.sort(perm[:1]), ..., None]
    psnr = evaluate_psnr(model.network, PatchSet(val, CFG, model.mean, model.std), CFG.inner_steps,
                         torch.device("cpu"))
    assert psnr == pytest.approx(best["val_psnr"], abs=1e-3)


def test_bad_training_inputs() -> None:
    with pytest.raises(ValueError, match="finite"):
        _train(1, data=np.full((2, 8, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="share one spatial shape"):
        meta_train([np.zeros((1, 8, 8)), np.zeros((1, 9, 8))], CFG, TrainConfig(steps=1))
    with pytest.raises(ValueError):
        TrainConfig(outer_lr=float("nan"))
