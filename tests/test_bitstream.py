"""Chunk format: round trips and every kind of corruption -> BitstreamError."""

from __future__ import annotations

import gzip
import struct
import zlib

import numpy as np
import pytest
from helpers import era5, tiny_model

from coinpp_pipeline import BitstreamError, Model, ModelMismatchError
from coinpp_pipeline.bitstream import (
    FORMAT_VERSION,
    MAGIC,
    MAGIC2,
    MAX_ELEMENTS,
    Chunk,
    pack,
    pack_mask,
    same_model,
    unpack,
    unpack_mask,
)

MODEL_ID = bytes(range(8))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _raw_chunk(
    *,
    version: int = 1,
    dtype_code: int = 0,
    shape: tuple[int, ...] = (4, 5),
    patch: tuple[int, ...] = (2, 2),
    model_id: bytes = MODEL_ID,
    sections: list[tuple[int, bytes]] | None = None,
    magic: bytes = MAGIC,
    crc: bool = True,
) -> bytes:
    """Version-1 chunk bytes built independently from the documented layout (valid CRC by
    default); version 1 is still read, so the header checks below run on it."""
    sections = [(ord("K"), struct.pack("<d", 1.5))] if sections is None else sections
    out = bytearray(magic) + bytes([version, 0, dtype_code, len(shape)])
    for s in shape:
        out += _varint(s)
    out.append(len(patch))
    for p in patch:
        out += _varint(p)
    out += model_id + bytes([len(sections)])
    for tag, payload in sections:
        out += bytes([tag]) + _varint(len(payload)) + payload
    return bytes(out) + (struct.pack("<I", zlib.crc32(out)) if crc else b"")


@pytest.fixture(scope="module")
def model() -> Model:
    return tiny_model("era5-regular", steps=0)


@pytest.fixture(scope="module")
def real_chunk(model: Model) -> bytes:
    """A small real chunk with latents and a mask: 2 items of 9 x 11 ERA5 values."""
    a = era5()[:2, 50:59, 10:21]
    a[0, 3, 4] = np.nan
    blob = model.encode(a)
    assert set(unpack(blob).sections) == {"L", "M"}
    assert len(blob) < 400
    return blob


def _raw_chunk_v2(shape: tuple[int, ...], patch: tuple[int, ...] | None,
                  sections: list[tuple[int, bytes]], dtype_code: int = 0, flags: int = -1) -> bytes:
    """Version-2 chunk bytes from the documented layout; ``patch=None``: the trailing-layout
    flag (the layout is the last 2 axes of the shape, not stored)."""
    if flags < 0:
        flags = 1 if patch is None else 0
    out = bytearray(MAGIC2) + bytes([2 | flags << 4, dtype_code, len(shape)])
    for s in shape:
        out += _varint(s)
    if patch is not None:
        out.append(len(patch))
        for p in patch:
            out += _varint(p)
    out += MODEL_ID[:4] + bytes([len(sections)])
    for i, (tag, payload) in enumerate(sections):
        out += bytes([tag]) + (b"" if i == len(sections) - 1 else _varint(len(payload))) + payload
    return bytes(out) + struct.pack("<I", zlib.crc32(out))


# ------------------------------------------------------------------------------ round trips
def test_pack_matches_documented_layout() -> None:
    k = {"K": struct.pack("<d", 1.5)}
    assert FORMAT_VERSION == 2
    assert pack(Chunk(np.dtype("<f4"), (4, 5), (2, 2), MODEL_ID, k, version=1)) == _raw_chunk()
    assert pack(Chunk(np.dtype("<f4"), (4, 5), (2, 2), MODEL_ID, k)) == _raw_chunk_v2((4, 5), (2, 2), [(ord("K"), k["K"])])
    # a latent-grid chunk: the layout is the field shape (the last 2 axes), not stored
    g = {"M": b"mask", "G": b"latent grids"}
    grid = Chunk(np.dtype("<f4"), (20, 37, 49), (37, 49), MODEL_ID, g)
    v2 = pack(grid)
    assert v2 == _raw_chunk_v2((20, 37, 49), None, [(ord("M"), b"mask"), (ord("G"), b"latent grids")])
    v1 = pack(Chunk(np.dtype("<f4"), (20, 37, 49), (37, 49), MODEL_ID, g, version=1))
    assert len(v1) - len(v2) == 11  # 2 magic + 1 head + 3 layout + 4 model id + 1 last length
    # header + CRC of a one-field ERA5 chunk (181, 360) with a 200-byte G section (README)
    t2m = {"G": bytes(200)}
    assert len(pack(Chunk(np.dtype("<f4"), (1, 181, 360), (181, 360), MODEL_ID, t2m))) - 200 == 20
    assert len(pack(Chunk(np.dtype("<f4"), (1, 181, 360), (181, 360), MODEL_ID, t2m, version=1))) - 200 == 34


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("layout", [(37, 49), (16, 16), (49,), ()])
def test_both_versions_round_trip(version: int, layout: tuple[int, ...]) -> None:
    for sections in ({}, {"G": b""}, {"G": b"x" * 300}, {"M": b"m" * 200, "R": b"", "G": b"g"}):
        chunk = Chunk(np.dtype("<i2"), (3, 37, 49), layout, MODEL_ID, sections, version=version)
        back = unpack(pack(chunk))
        assert (back.shape, back.patch, back.sections, back.version) == ((3, 37, 49), layout, sections, version)
        assert back.model_id == MODEL_ID[: 8 if version == 1 else 4] and same_model(back.model_id, MODEL_ID)
        assert not same_model(back.model_id, bytes(8))


def test_version_2_header_checks() -> None:
    k = [(ord("K"), b"12345678")]
    with pytest.raises(BitstreamError, match="header flags"):
        unpack(_raw_chunk_v2((4, 5), (2, 2), k, flags=2))
    with pytest.raises(BitstreamError, match="needs >= 2 axes"):
        unpack(_raw_chunk_v2((4,), None, k))
    with pytest.raises(BitstreamError, match="version 2 under the version-1 magic"):
        unpack(_raw_chunk(version=2))
    v1_head = bytearray(_raw_chunk_v2((4, 5), (2, 2), k))
    v1_head[2] = 0x01
    with pytest.raises(BitstreamError, match="version 1 under the version-2 magic"):
        unpack(bytes(v1_head))
    with pytest.raises(ValueError, match="cannot be written"):
        pack(Chunk(np.dtype("f4"), (2,), (2,), MODEL_ID, {}, version=3))


@pytest.mark.parametrize("dtype", ["<f4", "<f8", "<f2", "i1", "<i2", "<i4", "<i8", "u1", "<u2", "<u4", "<u8"])
def test_pack_unpack_roundtrip(dtype: str) -> None:
    sections = {"L": bytes(range(256)) * 3, "M": b"", "R": b"\x00" * 200, "K": b"12345678"}
    chunk = Chunk(np.dtype(dtype), (3, 1, 700, 2), (16, 16), MODEL_ID, sections)
    back = unpack(pack(chunk))
    assert back.dtype == np.dtype(dtype)
    assert back.shape == chunk.shape and back.patch == chunk.patch and back.model_id == MODEL_ID[:4]
    assert back.sections == sections
    assert unpack(memoryview(pack(chunk))).sections == sections
    assert unpack(bytearray(pack(chunk))).shape == chunk.shape


def test_big_endian_dtype_is_stored_as_little_endian() -> None:
    chunk = Chunk(np.dtype(">f4"), (2,), (2,), MODEL_ID, {})
    assert unpack(pack(chunk)).dtype == np.dtype("<f4")


def test_pack_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="8 bytes"):
        pack(Chunk(np.dtype("f4"), (2,), (2,), b"short", {}))
    with pytest.raises(ValueError, match="section tag"):
        pack(Chunk(np.dtype("f4"), (2,), (2,), MODEL_ID, {"Z": b""}))
    with pytest.raises(ValueError, match="cannot be stored"):
        pack(Chunk(np.dtype("c8"), (2,), (2,), MODEL_ID, {}))


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 9), (2, 3, 5, 7)])
def test_mask_roundtrip(shape: tuple[int, ...]) -> None:
    mask = np.random.default_rng(len(shape)).random(shape) < 0.3
    np.testing.assert_array_equal(unpack_mask(pack_mask(mask), shape), mask)


def test_mask_corruption() -> None:
    payload = pack_mask(np.ones((10, 10), bool))
    with pytest.raises(BitstreamError, match="mask"):
        unpack_mask(b"not zlib at all", (10, 10))
    with pytest.raises(BitstreamError, match="expected"):
        unpack_mask(payload, (20, 20))  # too few bytes for the shape
    with pytest.raises(BitstreamError, match="expected"):
        unpack_mask(pack_mask(np.ones(10**6, bool)), (10, 10))  # more than the shape: bounded


# ------------------------------------------------------------------------------ corruption
@pytest.mark.parametrize("data", [b"", b"C", b"CNPP", b"CNPP\x01\x00\x00"])
def test_empty_and_tiny(data: bytes) -> None:
    with pytest.raises(BitstreamError, match="truncated"):
        unpack(data)


def test_every_truncation_raises(real_chunk: bytes, model: Model) -> None:
    for n in range(len(real_chunk)):
        with pytest.raises(BitstreamError) as info:
            unpack(real_chunk[:n])
        msg = str(info.value)
        assert any(w in msg for w in ("truncated", "CRC32", "magic")), (n, msg)
    for n in range(0, len(real_chunk), 17):
        with pytest.raises(BitstreamError):
            model.decode(real_chunk[:n])


def test_every_single_byte_flip_raises(real_chunk: bytes) -> None:
    data = bytearray(real_chunk)
    for pos in range(len(data)):
        for flip in (0x01, 0x80, 0xFF):
            corrupted = bytearray(data)
            corrupted[pos] ^= flip
            with pytest.raises(BitstreamError) as info:
                unpack(bytes(corrupted))
            msg = str(info.value)
            assert any(w in msg for w in ("CRC32", "magic", "version")), (pos, msg)


def test_flips_through_model_decode(real_chunk: bytes, model: Model) -> None:
    for pos in range(0, len(real_chunk), 7):
        corrupted = bytearray(real_chunk)
        corrupted[pos] ^= 0x10
        with pytest.raises(BitstreamError):
            model.decode(bytes(corrupted))


@pytest.mark.parametrize(
    "foreign",
    [
        gzip.compress(b"hello world" * 10),
        b"\x89PNG\r\n\x1a\n" + bytes(40),
        b"\x89HDF\r\n\x1a\n" + bytes(40),
        b"PK\x03\x04" + bytes(40),
        b'{"zarr_format": 3}',
    ],
)
def test_foreign_bytes_bad_magic(foreign: bytes) -> None:
    with pytest.raises(BitstreamError, match="magic"):
        unpack(foreign)


@pytest.mark.parametrize("version", [0, FORMAT_VERSION + 1, 255])
def test_unknown_version(version: int) -> None:
    with pytest.raises(BitstreamError, match=f"version {version} is not supported"):
        unpack(_raw_chunk(version=version))
    if version < 16:  # the version-2 head byte holds the version in its low 4 bits
        head = bytearray(_raw_chunk_v2((4, 5), (2, 2), [(ord("K"), b"12345678")]))
        head[2] = version
        with pytest.raises(BitstreamError, match=f"version {version} is not supported"):
            unpack(bytes(head))


def test_huge_declared_shape_rejected_before_allocation() -> None:
    # 2**40 elements as a product of modest axes, with a valid CRC
    with pytest.raises(BitstreamError, match="exceeds"):
        unpack(_raw_chunk(shape=(1 << 20, 1 << 20)))
    # one axis of 2**40
    with pytest.raises(BitstreamError, match="exceeds"):
        unpack(_raw_chunk(shape=(1 << 40,), patch=(2,)))
    # the largest allowed size still parses (nothing is allocated by unpack)
    assert unpack(_raw_chunk(shape=(MAX_ELEMENTS,), patch=(2,))).shape == (MAX_ELEMENTS,)
    # an endless varint runs into the end of the data, not into a huge number
    with pytest.raises(BitstreamError):
        unpack(MAGIC + bytes([FORMAT_VERSION, 0, 0, 1]) + b"\x80" * 64 + b"\x00\x00\x00\x00")


def test_huge_shape_through_model_decode(model: Model) -> None:
    data = _raw_chunk(shape=(1 << 20, 1 << 20), model_id=model.model_id)
    with pytest.raises(BitstreamError, match="exceeds"):
        model.decode(data)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sections": [(ord("Z"), b"")]}, "unknown section tag"),
        ({"sections": [(0, b"")]}, "unknown section tag"),
        ({"dtype_code": 200}, "unknown dtype"),
        ({"shape": (4,) * 40, "patch": ()}, "ndim"),
        ({"shape": (4,), "patch": (2, 2)}, "patch has 2 axes"),
        ({"patch": (0, 2)}, "invalid patch"),
    ],
)
def test_invalid_header_fields(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(BitstreamError, match=match):
        unpack(_raw_chunk(**kwargs))  # type: ignore[arg-type]


def test_section_length_beyond_data() -> None:
    # declared length larger than the rest of the chunk
    data = bytearray(_raw_chunk(sections=[(ord("K"), b"12345678")], crc=False))
    data[-9] = 50
    data += struct.pack("<I", zlib.crc32(data))
    with pytest.raises(BitstreamError, match="section length = 50 exceeds"):
        unpack(bytes(data))
    data = bytearray(_raw_chunk(sections=[(ord("K"), b"12345678")], crc=False))
    data[-9] = 12  # within the body size, but past its end
    data += struct.pack("<I", zlib.crc32(data))
    with pytest.raises(BitstreamError, match="truncated"):
        unpack(bytes(data))


def test_trailing_garbage(real_chunk: bytes) -> None:
    with pytest.raises(BitstreamError, match="CRC32"):
        unpack(real_chunk + b"\x00")
    # garbage inside the CRC-protected body after the last section
    body = _raw_chunk(crc=False) + b"junk"
    with pytest.raises(BitstreamError, match="unexpected bytes"):
        unpack(body + struct.pack("<I", zlib.crc32(body)))


def test_chunk_from_another_model(real_chunk: bytes, model: Model) -> None:
    other = tiny_model("era5-regular", steps=0, seed=1)
    assert other.sha256 != model.sha256
    with pytest.raises(ModelMismatchError, match="not by this model"):
        other.decode(real_chunk)


def test_decode_rejects_inconsistent_valid_crc_chunks(model: Model) -> None:
    mid = model.model_id
    with pytest.raises(BitstreamError, match="neither"):
        model.decode(_raw_chunk(model_id=mid, shape=(4, 4), patch=(8, 8), sections=[]))
    with pytest.raises(BitstreamError, match="patch layout"):
        model.decode(_raw_chunk(model_id=mid, shape=(4, 4), patch=(4, 4)))
    with pytest.raises(BitstreamError, match="does not fit"):
        model.decode(_raw_chunk(model_id=mid, shape=(4,), patch=(8,)))
    with pytest.raises(BitstreamError, match="8 bytes"):
        model.decode(_raw_chunk(model_id=mid, shape=(4, 4), patch=(8, 8), sections=[(ord("K"), b"1")]))
    with pytest.raises(BitstreamError):
        model.decode(_raw_chunk(model_id=mid, shape=(4, 4), patch=(8, 8), sections=[(ord("L"), b"abc")]))
    with pytest.raises(BitstreamError, match="integer"):
        mask = pack_mask(np.ones((4, 4), bool))
        model.decode(
            _raw_chunk(
                model_id=mid, dtype_code=4, shape=(4, 4), patch=(8, 8),
                sections=[(ord("K"), bytes(8)), (ord("M"), mask)],
            )
        )
