"""Model.encode/decode on real data: shapes, dtypes, masks, constants, error bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import era5, mri, roundtrip, tiny_model, training_data

from coinpp_pipeline import Model, NotFittedError
from coinpp_pipeline.bitstream import unpack
from coinpp_pipeline.errors import BitstreamError


@pytest.fixture(scope="module")
def m2d() -> Model:
    return tiny_model("era5-regular")


def _t2m_test(day: int = 1) -> np.ndarray:
    """Held-out t2m (another day, another region than the training crop): (2, 40, 56)."""
    return era5("t2m", day)[:2, 100:140, 200:256]


def test_roundtrip_era5_regular(m2d: Model) -> None:
    a = _t2m_test()
    out, st = roundtrip(m2d, a)
    assert st.nbytes < a.nbytes / 20
    assert st.rmse < float(np.ptp(a))  # a tiny model after 30 steps: only a sanity check
    # leading axes are items: a single 2-D field and a (1, 1, H, W) array work too
    out1, _ = roundtrip(m2d, a[0])
    np.testing.assert_allclose(out1, out[0], atol=1e-3)
    roundtrip(m2d, a[None, :1])


def test_roundtrip_era5_latlon_full_globe() -> None:
    m = tiny_model("era5-latlon")
    a = era5("t2m", 2)[:1, ::4, ::4]  # held-out day, the model's grid
    out, st = roundtrip(m, a)
    assert st.rmse < float(np.ptp(a))
    # and the full 1-degree globe decodes too (coordinates follow the encoded shape)
    big = era5("t2m", 2)[0]
    roundtrip(m, big)


def test_float64_input(m2d: Model) -> None:
    a = _t2m_test().astype(np.float64)
    out, st = roundtrip(m2d, a)
    assert out.dtype == np.float64 and st.rmse < float(np.ptp(a))


def test_float16_input(m2d: Model) -> None:
    a = _t2m_test().astype(np.float16)
    out, _ = roundtrip(m2d, a)
    assert out.dtype == np.float16


def test_nan_mask_restored_exactly(m2d: Model) -> None:
    a = _t2m_test()
    rng = np.random.default_rng(0)
    a[rng.random(a.shape) < 0.2] = np.nan
    a[0, :10, :10] = np.nan  # whole patches missing
    a[1, -1, :] = np.nan
    out, _ = roundtrip(m2d, a)  # roundtrip checks NaN positions are identical
    assert "M" in unpack(m2d.encode(a)).sections
    assert np.isfinite(out[~np.isnan(a)]).all()


def test_all_nan_chunk(m2d: Model) -> None:
    a = np.full((3, 9, 11), np.nan, np.float32)
    out, st = roundtrip(m2d, a)
    assert np.isnan(out).all() and st.nbytes < 64
    assert set(unpack(m2d.encode(a)).sections) == {"M", "K"}


@pytest.mark.parametrize("value", [0.0, 273.15, -1e30, 1e-40])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constant_chunk_is_exact(m2d: Model, value: float, dtype: type) -> None:
    a: np.ndarray = np.full((2, 17, 23), value, dtype)
    out, st = roundtrip(m2d, a)
    np.testing.assert_array_equal(out, a)
    assert st.nbytes < 64
    # constant apart from NaNs: still exact, NaNs restored
    a[0, 1, 2] = np.nan
    out, _ = roundtrip(m2d, a)
    np.testing.assert_array_equal(out, a)


def test_constant_integer_chunk_is_exact() -> None:
    m = tiny_model("mri-2d")
    a = np.full((5, 7), -1234, np.int16)
    out, _ = roundtrip(m, a)
    np.testing.assert_array_equal(out, a)


def test_chunk_smaller_than_a_patch(m2d: Model) -> None:
    for shape in [(1, 1), (3, 5), (7, 7), (1, 30)]:
        a = _t2m_test()[0, : shape[0], : shape[1]].copy()
        out, st = roundtrip(m2d, a)
        assert st.max_abs_error < 10 * float(np.ptp(_t2m_test())) + 1
        exact, _ = roundtrip(m2d, a, max_abs_error=0.05)
        assert np.abs(exact - a).max() <= 0.05


def test_zero_items(m2d: Model) -> None:
    a = np.zeros((0, 8, 8), np.float32)
    out, _ = roundtrip(m2d, a)
    assert out.shape == (0, 8, 8)


def test_int16_mri_regular_grid() -> None:
    m = tiny_model("mri-2d")
    vol = mri()
    a = vol[20:100, 10:80, 16, 1].astype(np.int16)  # a held-out slice at the other time point
    out, st = roundtrip(m, a)
    assert out.dtype == np.int16
    assert st.rmse < float(np.ptp(a))
    for bound in (0.4, 1.0, 7.0, 50.0):
        out, st = roundtrip(m, a, max_abs_error=bound)
        assert st.max_abs_error <= bound, (bound, st.max_abs_error)
    np.testing.assert_array_equal(roundtrip(m, a, max_abs_error=0.4)[0], a)  # lossless


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.uint16, np.int64])
def test_other_integer_dtypes_clip_to_range(dtype: type) -> None:
    m = tiny_model("mri-2d")
    info = np.iinfo(dtype)
    a = np.clip(mri()[30:60, 30:60, 10, 0], info.min, info.max).astype(dtype)
    out, st = roundtrip(m, a)
    assert out.min() >= info.min and out.max() <= info.max
    out, st = roundtrip(m, a, max_abs_error=2.0)
    assert st.max_abs_error <= 2.0


def test_1d_regular_grid_real_rows() -> None:
    m = tiny_model("era5-1d", steps=15)
    a = era5("t2m", 3)[:2, 130, :]  # held-out rows as two 1-D items of 360 points
    out, st = roundtrip(m, a)
    assert st.rmse < float(np.ptp(a))
    out, st = roundtrip(m, a[0, :37], max_abs_error=0.25)  # shorter than a patch
    assert st.max_abs_error <= 0.25


def test_3d_regular_grid_mri_subvolume() -> None:
    m = tiny_model("mri-3d", steps=15)
    a = mri()[64:84, 40:53, 4:13, 0]  # (20, 13, 9): patches (8, 8, 4) do not divide it
    out, st = roundtrip(m, a)
    assert st.rmse < float(np.ptp(a))
    out, st = roundtrip(m, a.astype(np.int16), max_abs_error=3.0)
    assert st.max_abs_error <= 3.0


@pytest.mark.parametrize("bound", [2.0, 0.5, 0.1, 0.01, 1e-3])
def test_error_bounded_float32(m2d: Model, bound: float) -> None:
    a = _t2m_test()
    a[0, 5, 5] = np.nan
    out, st = roundtrip(m2d, a, max_abs_error=bound)
    assert st.max_abs_error <= bound, (bound, st.max_abs_error)
    assert "R" in unpack(m2d.encode(a, max_abs_error=bound)).sections


def test_error_bound_tighter_costs_more(m2d: Model) -> None:
    a = _t2m_test()
    sizes = [roundtrip(m2d, a, max_abs_error=b)[1].nbytes for b in (1.0, 0.1, 0.01)]
    assert sizes[0] < sizes[1] < sizes[2]


def test_error_bounded_float16(m2d: Model) -> None:
    """float16 rounding of the decoded values must stay inside the bound too."""
    a = _t2m_test().astype(np.float16)  # values ~ 250-310 K: float16 spacing 0.25
    for bound in (1.0, 0.5, 0.3, 0.2):
        try:
            out, st = roundtrip(m2d, a, max_abs_error=bound)
        except ValueError as exc:  # a bound below the dtype's precision is refused clearly
            assert "precision" in str(exc)
            continue
        assert st.max_abs_error <= bound, (bound, st.max_abs_error)


def test_error_bound_below_float32_precision_refused(m2d: Model) -> None:
    with pytest.raises(ValueError, match="precision"):
        m2d.encode(_t2m_test(), max_abs_error=1e-6)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="max_abs_error"):
            m2d.encode(_t2m_test(), max_abs_error=bad)


def _residual_case(seed: int, share: float, spread: float = 3.0) -> np.ndarray:
    """A field-like (1, 60, 80, 1) residual: mostly below a 0.5 bound, ``share`` of the
    points well above it."""
    rng = np.random.default_rng(seed)
    big = rng.random((1, 60, 80, 1)) < share
    return np.where(big, rng.normal(0, spread, (1, 60, 80, 1)), rng.uniform(-0.4, 0.4, (1, 60, 80, 1)))


def _clustered_residual(seed: int, threshold: float, shape: tuple[int, ...] = (1, 60, 80, 1)) -> np.ndarray:
    """A residual whose large values come in patches (smoothed noise past ``threshold``), as
    a neural fit's misses do at edges: the case the row-above contexts are for."""
    rng = np.random.default_rng(seed)
    g = rng.normal(size=shape)
    for ax in (-3, -2):
        g = sum(np.roll(g, s, axis=ax) for s in range(-5, 6)) / 11
    g /= g.std()
    return np.where(np.abs(g) > threshold, 3 * g, 0.1 * g) + rng.normal(0, 0.1, shape)


@pytest.mark.parametrize(("case", "expected"), [
    ("sparse", "histogram"), ("some", "histogram"), ("dense", None), ("clustered", "context histograms"),
    ("clustered 3-D", "context histograms"), ("1-D items", None),
])
def test_residual_modes(case: str, expected: str | None) -> None:
    """The residual layer codes each transform under a Laplace, under the chunk's own symbol
    histogram, or under one histogram per row-above context, whichever is shortest: sparse
    residuals take a histogram and cost far less than the Laplace, clustered ones the
    contexts; every mode decodes within the bound."""
    from coinpp_pipeline.model import (
        RESIDUAL_MODES,
        RESIDUAL_TRANSFORMS,
        _decode_residual,
        _encode_residual,
        _histogram_bits,
        _laplace_bits,
        _residual_transform,
    )

    r = {"sparse": lambda: _residual_case(0, 0.003), "some": lambda: _residual_case(0, 0.05),
         "dense": lambda: _residual_case(0, 1.0), "clustered": lambda: _clustered_residual(0, 1.5),
         "clustered 3-D": lambda: _clustered_residual(1, 1.5, (1, 4, 60, 80, 1)),
         "1-D items": lambda: _residual_case(2, 0.3).reshape(4, 1200, 1)}[case]()
    blob = _encode_residual(r, np.zeros_like(r), np.ones(r.shape, bool), 0.5, np.dtype("<f4"))
    mode = blob[1]
    assert mode < len(RESIDUAL_MODES)
    out = _decode_residual(blob, r.shape)
    assert np.abs(out - r).max() <= 0.5
    if expected is None:
        return
    assert RESIDUAL_MODES[mode].endswith(", " + expected), RESIDUAL_MODES[mode]
    q = np.rint(r / (2 * (0.5 - 0.5 / 256))).astype(np.int64)
    transforms = [_residual_transform(q, t) for t in range(len(RESIDUAL_TRANSFORMS))]
    laplace = min(_laplace_bits(d) for d in transforms) / 8
    assert len(blob) < 0.8 * laplace, (len(blob), laplace)
    if expected == "context histograms":  # cheaper than a single histogram too
        assert len(blob) < min(_histogram_bits(d, False) for d in transforms) / 8


def test_residual_histogram_corruption_is_refused() -> None:
    from coinpp_pipeline.bitstream import _varint
    from coinpp_pipeline.model import _decode_residual, _encode_residual

    r = _residual_case(1, 0.01)
    blob = _encode_residual(r, np.zeros_like(r), np.ones(r.shape, bool), 0.5, np.dtype("<f4"))
    assert blob[1] >= 3 and blob[0] < 0x80  # histogram mode, one-byte rmax
    rmax = blob[0]
    head = 14  # varint rmax (1 B) + u8 mode + f64 width + f32 scale
    # the histogram must count exactly the chunk's symbols
    bad_shape = (1, 60, 79, 1)
    with pytest.raises(BitstreamError, match="histogram"):
        _decode_residual(blob, bad_shape)
    # a histogram wider than the decoder accepts is refused before it is read
    wide = _varint(300) + blob[1:head]
    with pytest.raises(BitstreamError, match="histogram"):
        _decode_residual(wide, r.shape)
    # a truncated histogram is refused
    with pytest.raises(BitstreamError):
        _decode_residual(blob[: head + rmax], r.shape)
    # the same for the per-context histograms of modes 6-8
    blob = _encode_residual(*(lambda c: (c, np.zeros_like(c)))(_clustered_residual(0, 1.5)),
                            np.ones((1, 60, 80, 1), bool), 0.5, np.dtype("<f4"))
    assert blob[1] >= 6
    with pytest.raises(BitstreamError, match="histogram"):
        _decode_residual(blob, bad_shape)
    with pytest.raises(BitstreamError):
        _decode_residual(blob[: head + 50], (1, 60, 80, 1))
    with pytest.raises(BitstreamError, match="unknown residual mode"):
        _decode_residual(blob[:1] + bytes([9]) + blob[2:], (1, 60, 80, 1))


@pytest.mark.parametrize("bound", [0.05, 0.5])
def test_error_bound_holds_across_thread_counts(m2d: Model, bound: float) -> None:
    a = _t2m_test()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        blob = m2d.encode(a, max_abs_error=bound)
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(m2d.decode(blob))
            assert np.abs(outs[-1] - a).max() <= bound
    finally:
        torch.set_num_threads(before)
    np.testing.assert_allclose(outs[0], outs[1], atol=bound)


def test_multichannel_partial_nan() -> None:
    """A NaN in one channel marks only that value missing; the other channels survive."""
    m = tiny_model("era5-uv", steps=0)
    a = np.stack([era5("u10")[:1, 60:76, 0:16], era5("v10")[:1, 60:76, 0:16]], axis=-1)
    a[0, 3, 3, 0] = np.nan
    a[0, 4, 4, :] = np.nan
    out, _ = roundtrip(m, a)
    assert np.isfinite(out[0, 3, 3, 1])
    out, st = roundtrip(m, a, max_abs_error=0.1)
    assert st.max_abs_error <= 0.1


@pytest.mark.parametrize(
    ("array", "exc", "match"),
    [
        (np.array([[1.0, np.inf], [0.0, 1.0]], np.float32), ValueError, "infinite"),
        (np.array([[1.0, -np.inf], [0.0, 1.0]]), ValueError, "infinite"),
        (np.ones((4, 4), np.complex64), TypeError, "complex"),
        (np.ones((4, 4), bool), TypeError, "bool"),
        (np.array([["a", "b"]]), TypeError, "dtype"),
        (np.ones((4, 4), np.float32).astype(object), TypeError, "dtype"),
        (np.ones(5, np.float32), ValueError, "trailing axes"),
        (np.ones((4, 0), np.float32), ValueError, "empty"),
    ],
)
def test_bad_inputs_raise_clear_errors(m2d: Model, array: np.ndarray, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        m2d.encode(array)


def test_unfitted_model_refuses() -> None:
    m = tiny_model("era5-regular", steps=0)
    bare = Model(m.config, m.network, m.mean, m.std, quantizer=None, entropy=None)
    with pytest.raises(NotFittedError):
        bare.encode(_t2m_test())
    with pytest.raises(NotFittedError):
        bare.decode(m.encode(_t2m_test()))
    with pytest.raises(NotFittedError):
        bare.to_bytes()


def test_encode_steps_override(m2d: Model) -> None:
    a = _t2m_test()
    _, few = roundtrip(m2d, a, steps=0)
    _, more = roundtrip(m2d, a, steps=10)
    assert more.rmse < few.rmse


def test_training_data_roundtrip(m2d: Model) -> None:
    a = training_data("era5-regular")
    out, st = roundtrip(m2d, a)
    assert st.rmse < float(a.std())


def test_decode_many_matches_single_decodes(m2d: Model) -> None:
    """Batched decoding (chunks of one layout share forward passes) equals chunk-by-chunk."""
    a = _t2m_test()
    holes = a.copy()
    holes[0, :5, :7] = np.nan
    blobs = [
        m2d.encode(a),  # (2, 40, 56)
        m2d.encode(a[1]),  # same layout, one item
        m2d.encode(a[:, :20, :30]),  # another layout
        m2d.encode(np.full((3, 8, 8), 5.0, np.float32)),  # constant: no network
        m2d.encode(holes, max_abs_error=0.5),  # mask + residual
        m2d.encode(a[0].astype(np.float64)),
    ]
    many = m2d.decode_many(blobs)
    assert len(many) == len(blobs)
    for blob, got in zip(blobs, many, strict=True):
        single = m2d.decode(blob)
        assert got.shape == single.shape and got.dtype == single.dtype
        np.testing.assert_allclose(got, single, rtol=0, atol=1e-4, equal_nan=True)
    assert np.isnan(many[4][0, :5, :7]).all()
    assert np.nanmax(np.abs(many[4] - holes)) <= 0.5
