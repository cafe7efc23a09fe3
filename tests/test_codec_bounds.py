"""Error bounds of the codec: every decoded finite value within the bound, for random and
adversarial chunks, and for decoders using other torch thread counts and batch sizes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import coinpp_pipeline.model as model_module
from coinpp_pipeline.codec import COINppCodec, chunk_bound

#: Errors the codec may raise instead of encoding (never a silent bound violation).
REFUSALS = ("below the", "too small for this data")


@contextlib.contextmanager
def other_decoder(threads: int, budget: int) -> Iterator[None]:
    """Decode as a different machine would: another thread count and forward batch size."""
    old_threads, old_budget = torch.get_num_threads(), model_module.DECODE_BUDGET
    torch.set_num_threads(threads)
    model_module.DECODE_BUDGET = budget
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        model_module.DECODE_BUDGET = old_budget


def make_chunk(
    seed: int, shape: tuple[int, int, int], offset: float, amplitude: float,
    noise: float, spikes: int, step: bool, nan_fraction: float, dtype: str,
) -> np.ndarray:
    """A smooth field plus noise, spikes, a step and NaN holes."""
    rng = np.random.default_rng(seed)
    b, h, w = shape
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    phase = rng.uniform(0, 2 * np.pi, size=(b, 1, 1))
    x = np.sin(2 * np.pi * (yy + 2 * xx) + phase) * amplitude + offset
    x = x + rng.normal(0.0, noise * amplitude, size=x.shape)
    if spikes:
        idx = rng.integers(0, x.size, size=spikes)
        x.reshape(-1)[idx] += rng.choice([-1, 1], size=spikes) * 20 * amplitude
    if step:
        x[:, :, w // 2 :] += 5 * amplitude
    if nan_fraction:
        x[rng.random(x.shape) < nan_fraction] = np.nan
    return x.astype(dtype)


def check_bound(y: np.ndarray, x: np.ndarray, bound: float) -> None:
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_array_equal(np.isnan(y), np.isnan(x))
    finite = np.isfinite(x)
    if finite.any():
        err = np.abs(y[finite].astype(np.float64) - x[finite].astype(np.float64))
        assert err.max() <= bound, (err.max(), bound)


chunks = st.builds(
    make_chunk,
    seed=st.integers(0, 2**31),
    shape=st.tuples(st.integers(1, 2), st.integers(1, 40), st.integers(1, 48)),
    offset=st.sampled_from([0.0, 280.0, -5000.0, 1e5]),
    amplitude=st.floats(1e-3, 1e3),
    noise=st.sampled_from([0.0, 0.01, 0.3]),
    spikes=st.integers(0, 5),
    step=st.booleans(),
    nan_fraction=st.sampled_from([0.0, 0.0, 0.05, 0.5]),
    dtype=st.sampled_from(["float32", "float64"]),
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(x=chunks, rel=st.floats(1e-4, 0.2), use_rel=st.booleans())
def test_bound_holds_for_random_chunks(model_env: str, x: np.ndarray, rel: float, use_rel: bool) -> None:
    finite = x[np.isfinite(x)].astype(np.float64)
    span = float(finite.max() - finite.min()) if finite.size else 0.0
    if use_rel:
        codec = COINppCodec(model=model_env, rel_error=rel)
        bound = rel * span
    else:
        bound = max(rel * span, 1e-3)
        codec = COINppCodec(model=model_env, max_abs_error=bound)
    assert chunk_bound(x, codec.max_abs_error, codec.rel_error) in (None, pytest.approx(bound))
    try:
        blob = codec.encode(x)
    except ValueError as exc:
        assert any(r in str(exc) for r in REFUSALS), exc
        return
    check_bound(codec.decode(blob), x, bound)
    with other_decoder(threads=1, budget=1 << 12):
        check_bound(codec.decode(blob), x, bound)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**31),
    dtype=st.sampled_from(["int16", "uint16", "int32", "uint8"]),
    bound=st.sampled_from([0.3, 1.0, 2.5, 7.0]),
    scale=st.sampled_from([3.0, 300.0, 3000.0]),
)
def test_integer_bound_holds(model_env: str, seed: int, dtype: str, bound: float, scale: float) -> None:
    info = np.iinfo(dtype)
    x = make_chunk(seed, (1, 23, 37), 0.0, scale, 0.05, 3, True, 0.0, "float64")
    x = np.clip(np.rint(x), info.min, info.max).astype(dtype)
    codec = COINppCodec(model=model_env, max_abs_error=bound)
    y = codec.decode(codec.encode(x))
    err = np.abs(y.astype(np.int64) - x.astype(np.int64)).max()
    assert err <= (0 if bound < 1 else bound)


ADVERSARIAL = {
    "checkerboard": lambda: np.indices((1, 32, 32)).sum(0) % 2 * 1000.0 - 500.0,
    "one-spike": lambda: np.where(np.arange(1024).reshape(1, 32, 32) == 517, 1e6, 280.0),
    "huge-values": lambda: np.full((1, 16, 16), 3e37) * np.linspace(0.5, 1, 256).reshape(1, 16, 16),
    "tiny-values": lambda: np.linspace(1e-30, 2e-30, 512).reshape(1, 16, 32),
    "denormal-range": lambda: np.linspace(-1e-40, 1e-40, 64).reshape(1, 8, 8),
    "ramp-with-nans": lambda: np.where(np.eye(24, 40)[None] > 0, np.nan, np.arange(960.0).reshape(1, 24, 40)),
    "two-values": lambda: np.where(np.arange(300).reshape(1, 15, 20) % 7 == 0, 0.0, 1.0),
    "single-finite": lambda: np.where(np.arange(100).reshape(1, 10, 10) == 3, 5.0, np.nan),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
@pytest.mark.parametrize("rel", [1e-3, 0.05])
def test_adversarial_chunks(model_env: str, name: str, dtype: str, rel: float) -> None:
    with np.errstate(over="ignore"):
        x = ADVERSARIAL[name]().astype(dtype)
    codec = COINppCodec(model=model_env, rel_error=rel)
    bound = chunk_bound(x, None, rel)
    try:
        blob = codec.encode(x)
    except ValueError as exc:
        # refusing is allowed (a clear error), decoding wrong values is not
        assert any(r in str(exc) for r in REFUSALS), exc
        return
    y = codec.decode(blob)
    check_bound(y, x, 0.0 if bound is None else bound)
    with other_decoder(threads=1, budget=1 << 10):
        check_bound(codec.decode(blob), x, 0.0 if bound is None else bound)


def test_bound_on_real_fields_with_other_decoders(model_env: str, era5_t2m: np.ndarray) -> None:
    x = era5_t2m[-1:]  # full 181 x 360 field
    codec = COINppCodec(model=model_env, max_abs_error=0.05)
    blob = codec.encode(x)
    ref = codec.decode(blob)
    check_bound(ref, x, 0.05)
    for threads, budget in ((1, 1 << 12), (2, 1 << 16), (1, 1 << 26)):
        with other_decoder(threads, budget):
            y = codec.decode(blob)
        check_bound(y, x, 0.05)
        assert np.abs(y - ref).max() < 1e-3  # decoders agree up to float noise
