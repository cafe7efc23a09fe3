"""Model files: safetensors + JSON, identified by sha256, never unpickled."""

from __future__ import annotations

import hashlib
import json
import pathlib
import pickle
import re
import struct
import uuid

import numpy as np
import pytest
import torch
from helpers import ROOT, era5, tiny_model

from coinpp_pipeline import Model, ModelFileError
from coinpp_pipeline.checkpoints import read_bytes


@pytest.fixture(scope="module")
def model() -> Model:
    return tiny_model("era5-regular", steps=0)


def _rewrite_metadata(data: bytes, **changes: str | None) -> bytes:
    """Return the safetensors bytes with ``__metadata__`` keys changed (None deletes)."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    for k, v in changes.items():
        if v is None:
            header["__metadata__"].pop(k, None)
        else:
            header["__metadata__"][k] = v
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


def _same_model(a: Model, b: Model) -> None:
    assert a.config == b.config
    for (ka, va), (kb, vb) in zip(a.network.state_dict().items(), b.network.state_dict().items(), strict=True):
        assert ka == kb
        torch.testing.assert_close(va, vb, rtol=0, atol=0)
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.std, b.std)
    assert a.quantizer is not None and b.quantizer is not None
    np.testing.assert_array_equal(a.quantizer.lo, b.quantizer.lo)
    np.testing.assert_array_equal(a.quantizer.hi, b.quantizer.hi)
    assert a.quantizer.bits == b.quantizer.bits
    assert a.entropy is not None and b.entropy is not None
    np.testing.assert_array_equal(a.entropy.counts, b.entropy.counts)


def test_save_load_local_path(model: Model, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "sub" / "dir" / "m.coinpp"
    sha = model.save(str(path))
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest() == model.sha256
    assert [p.name for p in path.parent.iterdir()] == ["m.coinpp"]  # no temporary left over
    loaded = Model.load(str(path), sha256=sha)
    _same_model(model, loaded)
    assert loaded.sha256 == sha and loaded.model_id == model.model_id
    # a chunk from the saved model decodes with the loaded one, identically
    a = era5()[:1, 60:75, 30:50]
    blob = model.encode(a)
    np.testing.assert_array_equal(loaded.decode(blob), model.decode(blob))
    # file:// URLs and upper-case hashes work too
    assert Model.load(f"file://{path}", sha256=sha.upper()).sha256 == sha
    # saving is deterministic
    assert loaded.to_bytes() == path.read_bytes()


def test_save_load_memory_url(model: Model) -> None:
    url = f"memory://coinpp-tests/{uuid.uuid4().hex}/model.coinpp"
    sha = model.save(url)
    assert sha == hashlib.sha256(read_bytes(url)).hexdigest()
    _same_model(model, Model.load(url, sha256=sha))


def test_wrong_sha256_names_the_file(model: Model, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "m.coinpp"
    model.save(str(path))
    with pytest.raises(ModelFileError, match="m.coinpp") as info:
        Model.load(str(path), sha256="0" * 64)
    assert "sha256" in str(info.value)


def test_damaged_file_fails_hash(model: Model, tmp_path: pathlib.Path) -> None:
    data = bytearray(model.to_bytes())
    data[-3] ^= 0x40
    path = tmp_path / "damaged.coinpp"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="damaged.coinpp"):
        Model.load(str(path), sha256=model.sha256)


@pytest.mark.parametrize(("version", "shown"), [("2", "'2'"), ("0", "'0'"), (None, "None")])
def test_unknown_format_version(model: Model, tmp_path: pathlib.Path, version: str | None, shown: str) -> None:
    path = tmp_path / "future.coinpp"
    path.write_bytes(_rewrite_metadata(model.to_bytes(), format_version=version))
    with pytest.raises(ModelFileError, match=f"format version {shown}; this build reads version 1"):
        Model.load(str(path))


def test_not_a_coinpp_safetensors_file(model: Model, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "other.safetensors"
    path.write_bytes(_rewrite_metadata(model.to_bytes(), format="something-else"))
    with pytest.raises(ModelFileError, match="not a coinpp"):
        Model.load(str(path))


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00" * 7,
        pickle.dumps({"network": [1, 2, 3]}),
        b"PK\x03\x04" + bytes(100),  # a zip (torch.save format)
        (ROOT / "data" / "era5-1deg" / "era5_1deg_20260325.nc").read_bytes()[:4096],
        struct.pack("<Q", 10) + b"not json!!" + bytes(16),
        struct.pack("<Q", 2) + b"[]",
    ],
)
def test_not_safetensors(tmp_path: pathlib.Path, content: bytes) -> None:
    path = tmp_path / "junk.bin"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match="junk.bin"):
        Model.load(str(path))


def test_damaged_tensor_data(model: Model, tmp_path: pathlib.Path) -> None:
    data = model.to_bytes()
    path = tmp_path / "cut.coinpp"
    path.write_bytes(data[:-100])
    with pytest.raises(ModelFileError, match="cut.coinpp"):
        Model.load(str(path))


def test_load_never_unpickles(model: Model, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.coinpp"
    sha = model.save(str(path))

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle/torch.load used while loading a model")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    loaded = Model.load(str(path), sha256=sha)
    assert loaded.sha256 == sha


def test_package_source_has_no_unpickling() -> None:
    for src in (ROOT / "coinpp_pipeline").rglob("*.py"):
        text = src.read_text()
        for pattern in (r"(?<![\w.])torch\.load\(", r"import (c?pickle|dill|joblib)", r"from (c?pickle|dill|joblib)", r"pickle\.(loads?|Unpickler)\b", r"weights_only"):
            assert not re.search(pattern, text), f"{src.name} matches {pattern}"


def test_serialization_is_deterministic(model: Model) -> None:
    """Equal models give equal bytes (safetensors' own metadata order varies per call)."""
    from coinpp_pipeline.checkpoints import serialize

    tensors: dict[str, torch.Tensor | np.ndarray] = {"b": torch.arange(3.0), "a": np.ones((2, 2), np.int64)}
    outs = {serialize(tensors, {"x": 1, "y": [1, 2]}) for _ in range(25)}
    assert len(outs) == 1
    fresh = Model.from_bytes(model.to_bytes())
    fresh._bytes = None  # force a re-serialisation
    assert fresh.to_bytes() == model.to_bytes()
