"""The numcodecs codec ``"coinpp"``: configuration, pickling, round trips, dtypes, errors."""

from __future__ import annotations

import json
import pickle

import numcodecs
import numpy as np
import pytest

from coinpp_pipeline import BitstreamError
from coinpp_pipeline.codec import COINppCodec


def test_get_codec_by_id_and_json_config_round_trip(model_env: str) -> None:
    codec = numcodecs.get_codec({"id": "coinpp", "model": model_env, "max_abs_error": 0.5})
    assert isinstance(codec, COINppCodec)
    config = codec.get_config()
    assert config == {
        "id": "coinpp",
        "model": model_env,
        "model_url": None,
        "steps": None,
        "max_abs_error": 0.5,
        "rel_error": None,
    }
    again = numcodecs.get_codec(json.loads(json.dumps(config)))
    assert again == codec
    assert again != numcodecs.get_codec({**config, "max_abs_error": 0.25})


def test_pickle_is_small_and_drops_the_model(model_env: str, era5_small: np.ndarray) -> None:
    codec = COINppCodec(model=model_env, rel_error=0.01)
    blob = codec.encode(era5_small[:1])  # loads the model into the codec
    assert codec._model is not None
    data = pickle.dumps(codec)
    assert len(data) < 1024
    back = pickle.loads(data)
    assert back == codec and back._model is None
    np.testing.assert_array_equal(back.decode(blob), codec.decode(blob))


def test_model_object_is_registered_and_replaced_by_its_hash(no_models: None, codec_model) -> None:
    codec = COINppCodec(model=codec_model)
    assert codec.model == codec_model.sha256
    assert json.dumps(codec.get_config())


def test_round_trip_shape_dtype_and_bound(model_env: str, era5_small: np.ndarray) -> None:
    x = era5_small[:2]
    codec = COINppCodec(model=model_env, max_abs_error=0.2)
    blob = codec.encode(x)
    assert isinstance(blob, bytes) and len(blob) < x.nbytes
    y = codec.decode(blob)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert np.abs(y - x).max() <= 0.2
    # memoryview / ndarray input buffers decode the same
    np.testing.assert_array_equal(codec.decode(memoryview(blob)), y)
    np.testing.assert_array_equal(codec.decode(np.frombuffer(blob, np.uint8)), y)


def test_decode_honours_out(model_env: str, era5_small: np.ndarray) -> None:
    x = era5_small[:1]
    codec = COINppCodec(model=model_env, max_abs_error=0.3)
    blob = codec.encode(x)
    out = np.zeros_like(x)
    ret = codec.decode(blob, out=out)
    assert ret is out
    np.testing.assert_array_equal(out, codec.decode(blob))
    flat = bytearray(x.nbytes)  # zarr-v2-style flat buffer
    codec.decode(blob, out=flat)
    np.testing.assert_array_equal(np.frombuffer(flat, x.dtype).reshape(x.shape), out)
    with pytest.raises(ValueError, match="bytes"):
        codec.decode(blob, out=np.zeros(3, np.float32))


def test_lossy_without_bound_is_reasonable(model_env: str, era5_small: np.ndarray) -> None:
    x = era5_small[:1]
    y = COINppCodec(model=model_env).decode(COINppCodec(model=model_env).encode(x))
    rmse = float(np.sqrt(np.mean((y - x) ** 2)))
    assert rmse < float(x.std())  # better than the mean: the model learned something


@pytest.mark.parametrize("dtype", ["float64", "float16"])
def test_float_dtypes(model_env: str, era5_small: np.ndarray, dtype: str) -> None:
    x = era5_small[:1].astype(dtype)
    codec = COINppCodec(model=model_env, max_abs_error=0.5)
    y = codec.decode(codec.encode(x))
    assert y.dtype == x.dtype and y.shape == x.shape
    assert np.abs(y.astype(np.float64) - x.astype(np.float64)).max() <= 0.5


@pytest.mark.parametrize("dtype", ["int16", "uint16"])
@pytest.mark.parametrize("bound", [None, 0.4, 3.0])
def test_integer_dtypes_rounded_clipped_and_bounded(
    model_env: str, era5_small: np.ndarray, dtype: str, bound: float | None
) -> None:
    # MRI-like: non-negative integers spanning a few hundred levels, touching the dtype's
    # lower limit (uint16 0) so clipping matters
    base = (era5_small[:1] - era5_small[:1].min()) * 3.0
    x = np.rint(base).astype(dtype)
    codec = COINppCodec(model=model_env, max_abs_error=bound)
    y = codec.decode(codec.encode(x))
    assert y.dtype == x.dtype and y.shape == x.shape
    err = np.abs(y.astype(np.int64) - x.astype(np.int64))
    if bound is None:
        info = np.iinfo(dtype)
        assert y.min() >= info.min and y.max() <= info.max
    elif bound < 0.5:
        assert err.max() == 0  # a bound below one level is lossless
    else:
        assert err.max() <= bound


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((1, 8, 8), np.complex64),
        np.zeros((1, 8, 8), bool),
        np.full((1, 8, 8), "a"),
        np.full((1, 8, 8), None, dtype=object),
        np.zeros((1, 8, 8), ">f4"),
    ],
    ids=["complex", "bool", "str", "object", "big-endian"],
)
def test_unsupported_dtypes_fail_at_encode(model_env: str, array: np.ndarray) -> None:
    with pytest.raises(TypeError, match="coinpp"):
        COINppCodec(model=model_env).encode(array)


def test_infinity_is_rejected(model_env: str, era5_small: np.ndarray) -> None:
    x = era5_small[:1].copy()
    x[0, 3, 4] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        COINppCodec(model=model_env).encode(x)


def test_fortran_order_and_flat_buffers_are_rejected(model_env: str, era5_small: np.ndarray) -> None:
    codec = COINppCodec(model=model_env)
    with pytest.raises(ValueError, match="C-ordered"):
        codec.encode(np.asfortranarray(era5_small[:2]))
    with pytest.raises(ValueError, match="axes"):
        codec.encode(era5_small[:1].tobytes())  # shape lost: a flat uint8 buffer


@pytest.mark.parametrize(
    "kwargs",
    [
        {"model": "abc"},
        {"model": "z" * 64},
        {"model": "0" * 64, "max_abs_error": -1.0},
        {"model": "0" * 64, "rel_error": float("nan")},
        {"model": "0" * 64, "steps": -2},
        {"model": "0" * 64, "model_url": 3},
    ],
)
def test_invalid_configuration(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        COINppCodec(**kwargs)


def test_corrupted_and_foreign_bytes(model_env: str, era5_small: np.ndarray) -> None:
    codec = COINppCodec(model=model_env)
    blob = bytearray(codec.encode(era5_small[:1]))
    blob[len(blob) // 2] ^= 0xFF
    with pytest.raises(BitstreamError, match="corrupted"):
        codec.decode(bytes(blob))
    with pytest.raises(BitstreamError, match="truncated"):
        codec.decode(bytes(blob[:10]))
    with pytest.raises(BitstreamError, match="not a coinpp chunk"):
        codec.decode(numcodecs.Zlib().encode(era5_small[:1]))


def test_nan_constant_and_tiny_chunks(model_env: str, era5_small: np.ndarray) -> None:
    codec = COINppCodec(model=model_env, max_abs_error=0.1)
    cases = {
        "all-nan": np.full((1, 20, 30), np.nan, np.float32),
        "constant": np.full((2, 20, 30), 273.15, np.float32),
        "constant+nan": np.where(np.eye(20, 30, dtype=bool)[None], np.nan, 250.0).astype(np.float32),
        "smaller-than-patch": era5_small[:1, :5, :7],
        "single-point": era5_small[:1, :1, :1],
        "nan-holes": np.where(np.random.default_rng(0).random(era5_small[:1].shape) < 0.3, np.nan, era5_small[:1]),
    }
    for name, x in cases.items():
        y = codec.decode(codec.encode(x))
        assert y.shape == x.shape and y.dtype == x.dtype, name
        np.testing.assert_array_equal(np.isnan(y), np.isnan(x), err_msg=name)
        finite = np.isfinite(x)
        if finite.any():
            assert np.abs(y[finite] - x[finite]).max() <= 0.1, name
    const = cases["constant"]
    np.testing.assert_array_equal(codec.decode(codec.encode(const)), const)  # exact
