"""Entropy coder on constriction: exact round trips, near-ideal size, robust decoding."""

from __future__ import annotations

import numpy as np
import pytest

from coinpp_pipeline import BitstreamError, NotFittedError
from coinpp_pipeline.entropy import EntropyModel


def _peaked_symbols(rng: np.random.Generator, n: int, dims: int, levels: int) -> np.ndarray:
    """Rounded Gaussians with a different centre and spread per dimension."""
    centre = rng.uniform(levels * 0.3, levels * 0.7, size=dims)
    spread = rng.uniform(0.5, max(levels / 6, 0.6), size=dims)
    s = np.rint(rng.normal(centre, spread, size=(n, dims)))
    return np.clip(s, 0, levels - 1).astype(np.int32)


@pytest.mark.parametrize(("dims", "levels", "n"), [(1, 2, 1), (4, 16, 1), (8, 64, 300), (3, 65536, 50)])
def test_roundtrip_exact_random_symbols(dims: int, levels: int, n: int) -> None:
    rng = np.random.default_rng(levels + n)
    train = _peaked_symbols(rng, 500, dims, levels)
    model = EntropyModel.fit(train, levels)
    assert model.counts.shape == (dims, levels) and model.counts.min() >= 1
    # uniformly random symbols, including ones never seen in training (add-one smoothing)
    symbols = rng.integers(0, levels, size=(n, dims)).astype(np.int32)
    data = model.compress(symbols)
    assert len(data) % 4 == 0
    np.testing.assert_array_equal(model.decompress(data, n), symbols)


def test_roundtrip_zero_rows() -> None:
    model = EntropyModel.fit(np.zeros((3, 2), np.int32), 4)
    data = model.compress(np.zeros((0, 2), np.int32))
    assert model.decompress(data, 0).shape == (0, 2)


def test_size_near_cross_entropy() -> None:
    rng = np.random.default_rng(0)
    levels, dims = 64, 8
    train = _peaked_symbols(rng, 20000, dims, levels)
    model = EntropyModel.fit(train, levels)
    # fresh data from the same distribution: "typical" data for the fitted model
    rng2 = np.random.default_rng(0)
    test = _peaked_symbols(rng2, 20000, dims, levels)[:4000]
    data = model.compress(test)
    ideal_bytes = model.cross_entropy_bits(test) / 8
    assert ideal_bytes > 1000
    assert len(data) <= 1.05 * ideal_bytes + 8, (len(data), ideal_bytes)
    # and it is a real compression compared with storing 6 bits per symbol
    assert len(data) < test.size * 6 / 8


def test_constriction_model_is_machine_independent() -> None:
    """Probabilities are exact ratios of integer counts, so the model is reproducible."""
    counts = np.array([[1, 2, 3, 4], [10, 1, 1, 1]], np.int64)
    model = EntropyModel(counts)
    symbols = np.array([[0, 0], [3, 1], [2, 3], [1, 0]], np.int32)
    data = model.compress(symbols)
    assert model.compress(symbols) == data
    np.testing.assert_array_equal(EntropyModel(counts.copy()).decompress(data, 4), symbols)


@pytest.mark.parametrize("seed", range(40))
def test_garbage_payload_raises_or_returns(seed: int) -> None:
    rng = np.random.default_rng(seed)
    model = EntropyModel.fit(_peaked_symbols(rng, 200, 4, 32), 32)
    n_bytes = int(rng.integers(0, 12)) * 4 + (seed % 4 if seed % 5 == 0 else 0)
    garbage = rng.integers(0, 256, size=n_bytes, dtype=np.uint8).tobytes()
    n = int(rng.integers(0, 200))
    try:
        out = model.decompress(garbage, n)
    except BitstreamError as exc:
        assert "payload" in str(exc)
    else:
        assert out.shape == (n, 4) and out.dtype == np.int32
        assert out.min(initial=0) >= 0 and out.max(initial=0) < 32


def test_misaligned_payload() -> None:
    model = EntropyModel.fit(np.zeros((3, 2), np.int32), 4)
    with pytest.raises(BitstreamError, match="multiple of 4"):
        model.decompress(b"\x00\x01\x02", 1)


def test_not_fitted_on_empty() -> None:
    with pytest.raises(NotFittedError):
        EntropyModel.fit(np.zeros((0, 4), np.int32), 16)
    with pytest.raises(NotFittedError):
        EntropyModel.fit(np.zeros(4, np.int32), 16)


def test_bad_symbols_rejected() -> None:
    model = EntropyModel.fit(np.zeros((3, 2), np.int32), 4)
    with pytest.raises(ValueError, match="outside"):
        model.compress(np.array([[0, 4]], np.int32))
    with pytest.raises(ValueError, match="outside"):
        model.compress(np.array([[-1, 0]], np.int32))
    with pytest.raises(ValueError, match="dims"):
        model.compress(np.zeros((2, 3), np.int32))
