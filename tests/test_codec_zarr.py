"""zarr v2 (numcodecs compressor), zarr v3 (native serializer) and xarray round trips on a
local directory, ``memory://`` and S3 (moto), plus a fresh reader process."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr

from coinpp_pipeline import BitstreamError
from coinpp_pipeline import resolve as R
from coinpp_pipeline.codec import COINppCodec
from coinpp_pipeline.zarr_codec import COINppZarrCodec

REPO = Path(__file__).resolve().parents[1]
ERA5_FILES = sorted(str(p) for p in (REPO / "data" / "era5-1deg").glob("*.nc"))
BOUND = 0.25


def _create(url: str, fmt: int, sha: str, shape, chunks, storage_options=None, **codec_kw):
    kw = dict(shape=shape, chunks=chunks, dtype="float32", fill_value=np.nan, overwrite=True)
    if storage_options is not None:
        kw["storage_options"] = storage_options
    if fmt == 2:
        codec = COINppCodec(model=sha, **codec_kw)
        return zarr.create_array(url, zarr_format=2, compressors=[codec], filters=None, **kw)
    return zarr.create_array(
        url, serializer=COINppZarrCodec(model=sha, **codec_kw), compressors=None, **kw
    )


def _check(y: np.ndarray, x: np.ndarray, bound: float = BOUND) -> None:
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_array_equal(np.isnan(y), np.isnan(x))
    finite = np.isfinite(x)
    assert np.abs(y[finite] - x[finite]).max() <= bound


def test_v3_codec_dict_round_trip_and_pickle(model_env: str) -> None:
    codec = COINppZarrCodec(model=model_env, rel_error=0.01, steps=5)
    d = codec.to_dict()
    assert d == {
        "name": "coinpp",
        "configuration": {
            "model": model_env, "model_url": None, "steps": 5, "max_abs_error": None,
            "rel_error": 0.01,
        },
    }
    assert COINppZarrCodec.from_dict(json.loads(json.dumps(d))) == codec
    assert len(pickle.dumps(codec)) < 1024 and pickle.loads(pickle.dumps(codec)) == codec
    with pytest.raises(ValueError, match="unknown"):
        COINppZarrCodec.from_dict({"name": "coinpp", "configuration": {"model": model_env, "x": 1}})
    with pytest.raises(NotImplementedError):
        codec.compute_encoded_size(100, None)  # type: ignore[arg-type]
    from zarr.registry import get_codec_class

    assert get_codec_class("coinpp") is COINppZarrCodec  # entry point


def test_plain_numcodecs_object_is_not_a_v3_serializer(model_env: str) -> None:
    with pytest.raises(TypeError, match="ArrayBytesCodec"):
        zarr.create_array(
            "memory://wrong.zarr", shape=(1, 46, 90), dtype="float32",
            serializer=COINppCodec(model=model_env),
        )


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("where", ["dir", "memory"])
def test_round_trip_with_edge_chunk(
    model_env: str, era5_small: np.ndarray, tmp_path: Path, fmt: int, where: str
) -> None:
    x = era5_small[:3].copy()
    x[1, :5, :9] = np.nan  # a land-mask-like hole
    url = str(tmp_path / "a.zarr") if where == "dir" else f"memory://rt-{fmt}.zarr"
    a = _create(url, fmt, model_env, x.shape, (2, 46, 90), max_abs_error=BOUND)
    a[:] = x  # the second chunk is an edge chunk, padded with NaN
    R.forget_models()  # read back through COINPP_MODEL_PATH
    back = zarr.open_array(url, mode="r")
    _check(back[:], x)
    _check(back[2:3, 10:20, 30:50], x[2:3, 10:20, 30:50])


def test_v3_spatial_edge_chunks_and_all_nan_chunk(model_env: str, era5_small: np.ndarray) -> None:
    x = era5_small[:2].copy()
    x[1] = np.nan  # an all-NaN item
    a = _create("memory://edges.zarr", 3, model_env, x.shape, (1, 32, 64), rel_error=0.01)
    a[:] = x
    y = a[:]
    span = np.nanmax(x) - np.nanmin(x)
    _check(y, x, bound=0.01 * span)  # each chunk's own range is smaller than the array's


@pytest.mark.parametrize("batch_size", [1, 3])
def test_v3_decode_batches(model_env: str, era5_small: np.ndarray, batch_size: int) -> None:
    x = era5_small
    a = _create("memory://batch.zarr", 3, model_env, x.shape, (1, 46, 90), max_abs_error=BOUND)
    a[:] = x
    with zarr.config.set({"codec_pipeline.batch_size": batch_size}):
        _check(zarr.open_array("memory://batch.zarr")[:], x)


@pytest.mark.parametrize("fmt", [2, 3])
def test_s3_round_trip(
    model_env: str, era5_small: np.ndarray, s3_server: dict[str, str], fmt: int
) -> None:
    url = f"s3://coinpp-test/rt-v{fmt}.zarr"
    x = era5_small[:2]
    a = _create(url, fmt, model_env, x.shape, (1, 46, 90), s3_server, max_abs_error=BOUND)
    a[:] = x
    R.forget_models()
    _check(zarr.open_array(url, mode="r", storage_options=s3_server)[:], x)


def test_corrupted_chunk_gives_a_clear_error(
    model_env: str, era5_small: np.ndarray, tmp_path: Path
) -> None:
    url = str(tmp_path / "c.zarr")
    a = _create(url, 3, model_env, (1, 46, 90), (1, 46, 90))
    a[:] = era5_small[:1]
    chunk = tmp_path / "c.zarr" / "c" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[-9] ^= 0x55
    chunk.write_bytes(bytes(data))
    with pytest.raises(BitstreamError, match="corrupted"):
        zarr.open_array(url)[:]
    chunk.write_bytes(bytes(data[:7]))
    with pytest.raises(BitstreamError, match="truncated"):
        zarr.open_array(url)[:]


def test_missing_model_gives_a_clear_error(
    model_env: str, era5_small: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(tmp_path / "m.zarr")
    _create(url, 2, model_env, (1, 46, 90), (1, 46, 90))[:] = era5_small[:1]
    R.forget_models()
    empty = tmp_path / "empty-models"
    empty.mkdir()
    monkeypatch.setenv(R.MODEL_PATH_ENV, str(empty))
    with pytest.raises(R.ModelFileError) as info:
        zarr.open_array(url)[:]
    msg = str(info.value)
    assert model_env in msg and str(empty) in msg and "COINPP_MODEL_PATH" in msg


def test_int16_and_uint16_arrays(model_env: str, era5_small: np.ndarray) -> None:
    for dtype in ("int16", "uint16"):
        x = np.rint((era5_small[:2] - 200.0) * 10).astype(dtype)
        a = zarr.create_array(
            f"memory://int-{dtype}.zarr", shape=x.shape, chunks=(1, 46, 90), dtype=dtype,
            serializer=COINppZarrCodec(model=model_env, max_abs_error=2.0), compressors=None,
        )
        a[:] = x
        y = a[:]
        assert y.dtype == x.dtype
        assert np.abs(y.astype(np.int64) - x.astype(np.int64)).max() <= 2


def test_unsupported_dtype_fails_when_writing(model_env: str) -> None:
    a = zarr.create_array(
        "memory://bool.zarr", shape=(1, 8, 8), dtype="bool",
        serializer=COINppZarrCodec(model=model_env), compressors=None,
    )
    with pytest.raises(TypeError, match="bool"):
        a[:] = np.ones((1, 8, 8), bool)


# ---------------------------------------------------------------------------- xarray
def _dataset():
    import xarray as xr

    with xr.open_dataset(ERA5_FILES[-1]) as ds:
        ds = ds[["t2m", "msl", "u10", "v10"]].isel(
            latitude=slice(None, None, 4), longitude=slice(None, None, 4)
        ).load()
    ds["t2m"].attrs["note"] = "coinpp-compressed"
    return ds


@pytest.mark.parametrize("fmt", [2, 3])
def test_xarray_dataset_round_trip(model_env: str, tmp_path: Path, fmt: int) -> None:
    import xarray as xr

    ds = _dataset()
    if fmt == 3:
        enc = {"t2m": {"serializer": COINppZarrCodec(model=model_env, max_abs_error=BOUND), "compressors": None}}
    else:
        enc = {"t2m": {"compressors": [COINppCodec(model=model_env, max_abs_error=BOUND)], "filters": None}}
    enc["t2m"]["chunks"] = (2, 46, 90)
    store = tmp_path / f"ds-v{fmt}.zarr"
    ds.to_zarr(store, zarr_format=fmt, encoding=enc, consolidated=False)
    R.forget_models()
    back = xr.open_zarr(store, consolidated=False).load()
    assert set(back.data_vars) == {"t2m", "msl", "u10", "v10"}
    for name in ("msl", "u10", "v10"):  # default codec: lossless
        np.testing.assert_array_equal(back[name].values, ds[name].values)
    _check(back["t2m"].values, ds["t2m"].values)
    for c in ("time", "latitude", "longitude"):
        np.testing.assert_array_equal(back[c].values, ds[c].values)
    assert back.attrs == ds.attrs
    assert back["t2m"].attrs == ds["t2m"].attrs


# ---------------------------------------------------------------------------- fresh process
READER = textwrap.dedent(
    """
    import json, sys
    import numpy as np, xarray as xr, zarr
    out = {}
    for name in ("v2.zarr", "v3.zarr"):
        out[name] = zarr.open_array(sys.argv[1] + "/" + name, mode="r")[:].tolist()
    ds = xr.open_zarr(sys.argv[1] + "/ds.zarr", consolidated=False).load()
    out["ds"] = ds["t2m"].values.tolist()
    out["units"] = ds["t2m"].attrs.get("units")
    print(json.dumps(out))
    """
)


def test_fresh_process_reads_stores(
    model_env: str, codec_model_dir: Path, era5_small: np.ndarray, tmp_path: Path
) -> None:
    x = era5_small[:2]
    _create(str(tmp_path / "v2.zarr"), 2, model_env, x.shape, (1, 46, 90), max_abs_error=BOUND)[:] = x
    _create(str(tmp_path / "v3.zarr"), 3, model_env, x.shape, (1, 46, 90), max_abs_error=BOUND)[:] = x
    ds = _dataset()[["t2m"]].isel(time=slice(0, 2))
    enc = {"t2m": {"serializer": COINppZarrCodec(model=model_env, max_abs_error=BOUND), "compressors": None}}
    ds.to_zarr(tmp_path / "ds.zarr", encoding=enc, consolidated=False)
    env = {**os.environ, R.MODEL_PATH_ENV: str(codec_model_dir), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-c", READER, str(tmp_path)], capture_output=True, text=True,
        env=env, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("v2.zarr", "v3.zarr"):
        _check(np.asarray(got[name], np.float32), x)
    _check(np.asarray(got["ds"], np.float32), ds["t2m"].values)
    assert got["units"] == ds["t2m"].attrs.get("units")


def test_fresh_process_without_model_fails_clearly(
    model_env: str, era5_small: np.ndarray, tmp_path: Path
) -> None:
    _create(str(tmp_path / "v3.zarr"), 3, model_env, (1, 46, 90), (1, 46, 90))[:] = era5_small[:1]
    env = {k: v for k, v in os.environ.items() if k != R.MODEL_PATH_ENV}
    code = f"import zarr; zarr.open_array({str(tmp_path / 'v3.zarr')!r})[:]"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode != 0
    assert "ModelFileError" in proc.stderr and model_env in proc.stderr
    assert "COINPP_MODEL_PATH" in proc.stderr


NO_PACKAGE_READER = r"""
import importlib.metadata as md, json, sys, warnings
warnings.simplefilter("ignore")
sys.modules["coinpp_pipeline"] = None  # this reader does not have the package installed
_orig = md.entry_points
def _keep(eps):
    return md.EntryPoints([e for e in eps if not e.value.startswith("coinpp_pipeline")])
def entry_points(**kw):
    eps = _orig(**kw)
    return _keep(eps) if kw else md.SelectableGroups({g: _keep(v) for g, v in eps.items()})
md.entry_points = entry_points
import zarr
out = {}
for name in sys.argv[1:]:
    try:
        zarr.open_array(name)[:]
        out[name] = "read"
    except Exception as exc:
        out[name] = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def test_reader_without_the_package_gets_unknown_codec_error(
    model_env: str, era5_small: np.ndarray, tmp_path: Path
) -> None:
    """What the README promises a reader who lacks ``coinpp-pipeline``: zarr's own
    unknown-codec error naming ``coinpp`` (v3 and v2), never garbage."""
    stores = []
    for fmt in (3, 2):
        url = str(tmp_path / f"v{fmt}.zarr")
        _create(url, fmt, model_env, (1, 46, 90), (1, 46, 90))[:] = era5_small[:1]
        stores.append(url)
    proc = subprocess.run([sys.executable, "-c", NO_PACKAGE_READER, *stores], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for url in stores:
        assert "UnknownCodecError" in got[url] and "coinpp" in got[url], got[url]
