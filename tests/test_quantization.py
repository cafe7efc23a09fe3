"""Per-dimension uniform quantizer."""

from __future__ import annotations

import numpy as np
import pytest

from coinpp_pipeline import NotFittedError
from coinpp_pipeline.quantization import Quantizer


def _latents(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.array([1e-3, 1.0, 50.0, 1e4], np.float32)
    offsets = np.array([0.0, -3.0, 100.0, 0.0], np.float32)
    return (rng.normal(size=(2000, 4)) * scales + offsets).astype(np.float32)


@pytest.mark.parametrize("bits", [1, 4, 6, 8, 12])
def test_error_within_half_step_inside_range(bits: int) -> None:
    z = _latents()
    q = Quantizer.fit(z, bits, clip_std=4.0)
    assert q.lo.shape == q.hi.shape == (4,) and (q.hi > q.lo).all()
    sym = q.quantize(z)
    assert sym.dtype == np.int32 and sym.min() >= 0 and sym.max() < q.levels
    back = q.dequantize(sym)
    assert back.dtype == np.float32
    inside = (z >= q.lo) & (z <= q.hi)
    err = np.abs(back - z)
    # half a step, plus float32 rounding of lo + k * step
    tol = q.step / 2 + 4 * np.finfo(np.float32).eps * np.maximum(np.abs(q.lo), np.abs(q.hi))
    assert (err <= tol)[inside].all()
    # every symbol maps to a value within the range
    grid = q.dequantize(np.tile(np.arange(q.levels)[:, None], (1, 4)))
    assert (grid >= q.lo - tol).all() and (grid <= q.hi + tol).all()


def test_per_dimension_ranges_follow_each_scale() -> None:
    z = _latents()
    q = Quantizer.fit(z, 6)
    width = q.hi - q.lo
    # dimension ranges track their own spread (x1e3, x50, x1e4), not one global range
    ratios = width / z.std(0)
    assert ((ratios > 2.0) & (ratios < 8.5)).all(), ratios
    # the small-scale dimension keeps its resolution: relative error ~ 1/levels of its range
    err = np.abs(q.dequantize(q.quantize(z)) - z)
    assert err[:, 0].max() <= q.step[0] and q.step[0] < 1e-3


def test_clipping_outside_range() -> None:
    z = _latents()
    q = Quantizer.fit(z, 5, clip_std=2.0)
    far = np.stack([q.lo - 1e6, q.hi + 1e6, q.lo - 1, q.hi + 1]).astype(np.float32)
    sym = q.quantize(far)
    np.testing.assert_array_equal(sym[0], 0)
    np.testing.assert_array_equal(sym[1], q.levels - 1)
    np.testing.assert_array_equal(sym[2], 0)
    np.testing.assert_array_equal(sym[3], q.levels - 1)
    back = q.dequantize(sym)
    np.testing.assert_allclose(back[0], q.lo, rtol=1e-6)
    np.testing.assert_allclose(back[1], q.hi, rtol=1e-5)
    # range narrowed to the observed min/max when the data is tighter than mean +- k std
    q_wide = Quantizer.fit(z, 5, clip_std=100.0)
    np.testing.assert_allclose(q_wide.lo, z.min(0), rtol=1e-6)
    np.testing.assert_allclose(q_wide.hi, z.max(0), rtol=1e-6)


def test_degenerate_dimensions() -> None:
    z = _latents()
    z[:, 1] = 0.0  # constant zero
    z[:, 3] = 12345.0  # constant, large
    q = Quantizer.fit(z, 8)
    assert np.isfinite(q.lo).all() and np.isfinite(q.hi).all() and (q.step > 0).all()
    sym = q.quantize(z)
    back = q.dequantize(sym)
    assert np.isfinite(back).all()
    np.testing.assert_allclose(back[:, 1], 0.0, atol=1e-5)
    np.testing.assert_allclose(back[:, 3], 12345.0, rtol=1e-5)
    # a single training latent is also degenerate in every dimension
    q1 = Quantizer.fit(z[:1], 4)
    assert (q1.step > 0).all()
    np.testing.assert_allclose(q1.dequantize(q1.quantize(z[:1])), z[:1], rtol=1e-5, atol=1e-5)


def test_nonfinite_latents_stay_in_range() -> None:
    q = Quantizer.fit(_latents(), 6)
    sym = q.quantize(np.array([[np.inf, -np.inf, 0.0, 0.0]], np.float32))
    assert sym[0, 0] == q.levels - 1 and sym[0, 1] == 0


@pytest.mark.parametrize("bad", [np.zeros((0, 4)), np.zeros(5)])
def test_fit_needs_latents(bad: np.ndarray) -> None:
    with pytest.raises(NotFittedError):
        Quantizer.fit(bad, 6)
