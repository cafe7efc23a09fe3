"""Model resolution: search order, hash verification, clear errors, the model-URL policy."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from coinpp_pipeline import ModelFileError, ModelMismatchError
from coinpp_pipeline import resolve as R
from coinpp_pipeline.codec import COINppCodec
from coinpp_pipeline.zarr_codec import COINppZarrCodec

SHA = "ab" * 32


def test_search_path_keeps_urls_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    value = os.pathsep.join(["/models/a", "s3://bucket/models", "memory://m", "file:///x/y"])
    monkeypatch.setenv(R.MODEL_PATH_ENV, value)
    assert R.model_search_path() == ["/models/a", "s3://bucket/models", "memory://m", "file:///x/y"]


def test_cache_and_registry(no_models: None, codec_model) -> None:
    sha = R.register_model(codec_model)
    assert R.resolve_model(sha) is codec_model
    R.forget_models()
    with pytest.raises(ModelFileError):
        R.resolve_model(sha)


def test_loads_from_search_path_once(model_env: str) -> None:
    first = R.resolve_model(model_env)
    assert first.sha256 == model_env
    assert R.resolve_model(model_env) is first  # cached per process


def test_missing_model_names_hash_and_every_place(
    no_models: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(R.MODEL_PATH_ENV, os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    with pytest.raises(ModelFileError) as info:
        R.resolve_model(SHA, url=str(tmp_path / "c.coinpp"))
    msg = str(info.value)
    assert SHA in msg and "not found" in msg
    for place in ("a", "b"):
        assert str(tmp_path / place / f"{SHA}.coinpp") in msg
    assert str(tmp_path / "c.coinpp") in msg and "register_model" in msg


def test_hash_mismatch_is_refused(no_models: None, codec_model, tmp_path: Path, monkeypatch) -> None:
    # a different (valid) model file stored under this model's name
    from coinpp_pipeline.model import with_bits

    other = with_bits(codec_model, np.zeros((1, 46, 90), np.float32) + 280.0, bits=5)
    other.save(str(tmp_path / f"{codec_model.sha256}.coinpp"))
    monkeypatch.setenv(R.MODEL_PATH_ENV, str(tmp_path))
    with pytest.raises(ModelMismatchError) as info:
        R.resolve_model(codec_model.sha256)
    msg = str(info.value)
    assert codec_model.sha256 in msg and other.sha256 in msg and str(tmp_path) in msg


def test_mismatch_then_good_file_later_in_path(
    no_models: None, codec_model, codec_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    (tmp_path / f"{codec_model.sha256}.coinpp").write_bytes(b"garbage, not a model")
    monkeypatch.setenv(R.MODEL_PATH_ENV, os.pathsep.join([str(tmp_path), str(codec_model_dir)]))
    assert R.resolve_model(codec_model.sha256).sha256 == codec_model.sha256


def test_invalid_hash_in_config(no_models: None) -> None:
    with pytest.raises(ModelFileError, match="invalid model hash"):
        R.resolve_model("../../etc/passwd")


@pytest.mark.parametrize(
    ("url", "store", "expected"),
    [
        ("/abs/m.coinpp", None, "/abs/m.coinpp"),
        ("file:///abs/m.coinpp", None, "file:///abs/m.coinpp"),
        ("memory://m.coinpp", None, "memory://m.coinpp"),
        ("models/m.coinpp", "s3://b/data/t.zarr", "s3://b/data/models/m.coinpp"),
        ("./m.coinpp", "s3://b/data/t.zarr/", "s3://b/data/m.coinpp"),
        ("s3://b/data/models/m.coinpp", "s3://b/data/t.zarr", "s3://b/data/models/m.coinpp"),
    ],
)
def test_url_policy_allows(url: str, store: str | None, expected: str, no_models: None) -> None:
    assert R.check_model_url(SHA, url, store) == expected


@pytest.mark.parametrize(
    ("url", "store"),
    [
        ("http://evil.example/m.coinpp", None),
        ("https://evil.example/m.coinpp", "s3://b/data/t.zarr"),
        ("s3://other-bucket/m.coinpp", None),
        ("s3://b/elsewhere/m.coinpp", "s3://b/data/t.zarr"),
        ("../../other/m.coinpp", "s3://b/data/t.zarr"),
        ("../../m.coinpp", None),
    ],
)
def test_url_policy_refuses(url: str, store: str | None, no_models: None) -> None:
    with pytest.raises(R.ModelURLNotAllowedError) as info:
        R.check_model_url(SHA, url, store)
    assert SHA in str(info.value) and url in str(info.value)


def test_url_policy_prefixes(no_models: None, monkeypatch: pytest.MonkeyPatch) -> None:
    url = "https://models.example.org/coinpp/m.coinpp"
    with pytest.raises(R.ModelURLNotAllowedError, match="COINPP_ALLOWED_MODEL_URLS"):
        R.check_model_url(SHA, url)
    monkeypatch.setenv(R.ALLOWED_URLS_ENV, "s3://x/, https://models.example.org/coinpp/")
    assert R.check_model_url(SHA, url) == url
    monkeypatch.delenv(R.ALLOWED_URLS_ENV)
    R.allow_model_urls("https://models.example.org/")
    assert R.check_model_url(SHA, url) == url
    R.disallow_model_urls()
    with pytest.raises(R.ModelURLNotAllowedError):
        R.check_model_url(SHA, url)


def test_store_naming_a_remote_url_is_refused_when_read(
    model_env: str, era5_small: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "http://203.0.113.7/models/era5.coinpp"
    store = str(tmp_path / "remote-url.zarr")
    a = zarr.create_array(
        store, shape=(1, 46, 90), chunks=(1, 46, 90), dtype="float32", fill_value=np.nan,
        serializer=COINppZarrCodec(model=model_env, model_url=url),
    )
    a[:] = era5_small[:1]
    R.forget_models()
    monkeypatch.delenv(R.MODEL_PATH_ENV)
    with pytest.raises(R.ModelURLNotAllowedError) as info:
        zarr.open_array(store)[:]
    msg = str(info.value)
    assert model_env in msg and url in msg
    assert "COINPP_ALLOWED_MODEL_URLS" in msg and "allow_model_urls" in msg
    # a search path without the model falls through to the (refused) URL again
    monkeypatch.setenv(R.MODEL_PATH_ENV, str(Path(R.__file__).parent / "nowhere"))
    with pytest.raises(R.ModelURLNotAllowedError):
        zarr.open_array(store)[:]


def test_s3_model_url_refused_until_allowed(
    codec_model, no_models: None, s3_server: dict[str, str], era5_small: np.ndarray, monkeypatch
) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server)
    url = f"s3://coinpp-test/models/{codec_model.sha256}.coinpp"
    with fs.open(url, "wb") as f:
        f.write(codec_model.to_bytes())
    codec = COINppCodec(model=codec_model.sha256, model_url=url)
    R.register_model(codec_model)
    blob = codec.encode(era5_small[:1])
    R.forget_models()
    reader = COINppCodec(**{k: v for k, v in codec.get_config().items() if k != "id"})
    with pytest.raises(R.ModelURLNotAllowedError, match="not allowed"):
        reader.decode(blob)
    R.allow_model_urls("s3://coinpp-test/models/")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server["endpoint_url"])
    s3fs.S3FileSystem.clear_instance_cache()
    y = reader.decode(blob)
    assert y.shape == (1, 46, 90)
    assert R.resolve_model(codec_model.sha256).sha256 == codec_model.sha256


def test_model_too_large_or_not_a_file(
    no_models: None, codec_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / f"{codec_model.sha256}.coinpp"
    path.write_bytes(codec_model.to_bytes())
    monkeypatch.setenv(R.MODEL_PATH_ENV, str(tmp_path))
    monkeypatch.setenv(R.MAX_BYTES_ENV, "1000")
    with pytest.raises(ModelFileError, match="COINPP_MAX_MODEL_BYTES"):
        R.resolve_model(codec_model.sha256)
    monkeypatch.delenv(R.MAX_BYTES_ENV)
    path.unlink()
    path.mkdir()
    with pytest.raises(ModelFileError, match="not a regular file"):
        R.resolve_model(codec_model.sha256)
    shutil.rmtree(path)
