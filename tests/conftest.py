"""Shared fixtures.

Codec tests (``tests/test_codec_*.py``): ONE tiny model meta-trained per session on a few
ERA5 2 m temperature fields (about 10 s on 2 CPU cores), saved as ``<sha256>.coinpp`` in a
temporary directory, plus a local S3 (moto) server started on demand.
"""

from __future__ import annotations

import glob
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ERA5_FILES = sorted(glob.glob(str(REPO / "data" / "era5-1deg" / "*.nc")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def era5_t2m() -> np.ndarray:
    """ERA5 2 m temperature, ``(10, 181, 360)`` float32 (first three files of the sample)."""
    import xarray as xr

    fields = []
    for f in ERA5_FILES[:3]:
        with xr.open_dataset(f) as ds:
            fields.append(ds["t2m"].values)
    return np.concatenate(fields).astype(np.float32)


@pytest.fixture(scope="session")
def era5_small(era5_t2m: np.ndarray) -> np.ndarray:
    """Held-out-ish small fields: every 4th grid point of the last fields, ``(4, 46, 90)``."""
    return np.ascontiguousarray(era5_t2m[-4:, ::4, ::4])


@pytest.fixture(scope="session")
def codec_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("coinpp-models")


@pytest.fixture(scope="session")
def codec_model(era5_t2m: np.ndarray, codec_model_dir: Path):
    """The session's tiny model (saved as ``codec_model_dir/<sha256>.coinpp``)."""
    from coinpp_pipeline import ModelConfig, TrainConfig, meta_train

    cfg = ModelConfig(
        grid="latlon", patch_shape=(16, 16), coords="both", depth=3, width=32, latent_dim=8
    )
    model = meta_train(
        era5_t2m[:8], cfg, TrainConfig(steps=30, batch_size=32, first_order=True, val_every=10)
    )
    sha = model.save(str(codec_model_dir / f"{model.sha256}.coinpp"))
    assert sha == model.sha256
    return model


@pytest.fixture()
def model_env(codec_model, codec_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """No registered models; ``COINPP_MODEL_PATH`` points at the model directory. -> sha256."""
    from coinpp_pipeline import resolve

    resolve.forget_models()
    resolve.disallow_model_urls()
    monkeypatch.setenv(resolve.MODEL_PATH_ENV, str(codec_model_dir))
    monkeypatch.delenv(resolve.ALLOWED_URLS_ENV, raising=False)
    yield codec_model.sha256
    resolve.forget_models()
    resolve.disallow_model_urls()


@pytest.fixture()
def no_models(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Nothing registered, no search path, no allowed URL prefixes."""
    from coinpp_pipeline import resolve

    resolve.forget_models()
    resolve.disallow_model_urls()
    monkeypatch.delenv(resolve.MODEL_PATH_ENV, raising=False)
    monkeypatch.delenv(resolve.ALLOWED_URLS_ENV, raising=False)
    yield
    resolve.forget_models()
    resolve.disallow_model_urls()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, str]]:
    """A local moto S3 server with bucket ``coinpp-test``; yields fsspec storage options."""
    pytest.importorskip("moto")
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    old = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket="coinpp-test")
    try:
        yield {"key": "testing", "secret": "testing", "endpoint_url": endpoint}
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
