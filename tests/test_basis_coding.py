"""Quantized, entropy-coded basis coefficients (``coinpp_pipeline.basis_coding``)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from coinpp_pipeline import basis_coding as bc
from coinpp_pipeline.basis_coding import (
    MAX_SYMBOL,
    STEP_CODE_MAX,
    CoefficientCoder,
    step_code,
    step_size,
)
from coinpp_pipeline.errors import BitstreamError


def test_integer_tables_are_pinned() -> None:
    """The frequency tables are the chunk format: any change (or a platform whose maths
    gives other integers) must fail here, not silently mis-decode stored chunks."""
    assert bc.table_digest() == "2e969bbf487f8a6a1700237ae817768c948294ccdeafea3f013657c690b33a2a"
    f = bc._frequencies(8)  # scale 4 symbols
    assert f[0] == 1 << 30 and (np.diff(f) <= 0).all() and f.min() >= 1
    # ratio of neighbours ~ exp(-1 / scale) away from the tails
    np.testing.assert_allclose(f[3] / f[2], math.exp(-1 / 4), rtol=1e-6)


def test_step_code_follows_the_rate_weight() -> None:
    codes = [step_code(lam, 65160) for lam in (0.01, 0.1, 1, 10, 100)]
    assert codes == sorted(codes, reverse=True) and len(set(codes)) == 5  # coarser steps at higher weights
    lam, n = 1.0, 65160
    assert abs(math.log2(step_size(step_code(lam, n))) - math.log2(math.sqrt(6 * lam / (n * math.log(2))))) <= 0.125
    assert step_code(0.0, 100) == STEP_CODE_MAX and step_code(1e-12, 10**6) == STEP_CODE_MAX
    assert step_code(1e12, 1) == 0


@pytest.mark.parametrize("e", [0, 30, 57, STEP_CODE_MAX])
def test_round_trip_and_code_length(e: int) -> None:
    rng = np.random.default_rng(e)
    coder = CoefficientCoder(np.array([-5, -8, -12, -19]))
    c = rng.laplace(size=(9, 4)) * 2.0 ** (coder.scale_codes / 4)
    q = coder.quantize(c, e)
    q[0] = [MAX_SYMBOL, -MAX_SYMBOL, 0, 1]  # the alphabet's ends
    payload = coder.compress(q, e)
    back, e2 = coder.decompress(payload, 9)
    assert e2 == e and back.dtype == np.int64
    np.testing.assert_array_equal(back, q)
    bits = coder.code_length_bits(q, e)
    assert len(payload) <= 1 + math.ceil(bits / 32 + 1) * 4  # step byte + range-coder words
    # dequantized values are within half a step of the originals
    d = coder.dequantize(q[1:], e).astype(np.float64)
    assert np.all(np.abs(d - c[1:]) <= step_size(e) / 2 * (1 + 1e-6))


def test_prior_matches_the_data() -> None:
    """Coefficients drawn from the fitted scales cost about their entropy; coded with the
    wrong scales (here 4 octaves off) they cost clearly more."""
    rng = np.random.default_rng(0)
    scales = np.array([0.6, 0.3, 0.1, 0.05])
    coder = CoefficientCoder.fit(rng.laplace(size=(4000, 4)) * scales)  # Laplace scale b (RMS b sqrt 2)
    np.testing.assert_allclose(2.0 ** (coder.scale_codes / 4), scales, rtol=0.1)
    test = rng.laplace(size=(500, 4)) * scales
    e = 52
    q = coder.quantize(test, e)
    good = coder.code_length_bits(q, e)
    bad = CoefficientCoder(coder.scale_codes + 16).code_length_bits(q, e)
    # entropy of a quantized Laplace of scale b/delta >> 1: log2(2 e b / delta)
    ideal = sum(500 * math.log2(2 * math.e * b / step_size(e)) for b in scales)
    assert good < 1.03 * ideal and bad > 1.1 * good, (good, ideal, bad)


def test_malformed_payloads_and_bad_input() -> None:
    coder = CoefficientCoder(np.array([-8, -10]))
    good = coder.compress(np.array([[3, -2], [0, 1]]), 40)
    for bad, msg in [(b"", "invalid length"), (good[:-1], "invalid length"),
                     (bytes([STEP_CODE_MAX + 1]) + good[1:], "step code"),
                     (good[:1], "no range-coder words")]:
        with pytest.raises(BitstreamError, match=msg):
            coder.decompress(bad, 2)
    assert coder.decompress(coder.compress(np.zeros((0, 2), np.int64), 3), 0)[0].shape == (0, 2)
    with pytest.raises(ValueError, match="symbols outside"):
        coder.compress(np.array([[MAX_SYMBOL + 1, 0]]), 40)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        coder.compress(np.zeros((1, 3), np.int64), 40)
    with pytest.raises(ValueError, match="step code"):
        coder.compress(np.zeros((1, 2), np.int64), STEP_CODE_MAX + 1)
    with pytest.raises(ValueError, match="integer"):
        CoefficientCoder(np.array([0.5]))
    with pytest.raises(ValueError, match="finite"):
        CoefficientCoder.fit(np.array([[np.nan, 1.0]]))
    # huge coefficients are clipped to the alphabet, NaN to 0
    np.testing.assert_array_equal(coder.quantize(np.array([[1e9, np.nan]]), 40), [[MAX_SYMBOL, 0]])
    np.testing.assert_array_equal(CoefficientCoder.from_tensors(coder.to_tensors()).scale_codes, coder.scale_codes)
