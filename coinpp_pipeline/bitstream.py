"""Self-describing chunk bytes.

Layout (little-endian; ``varint`` = unsigned LEB128)::

    magic        4 bytes  b"CNPP"
    version      u8       FORMAT_VERSION
    flags        u8       reserved, 0
    dtype        u8       index into DTYPES
    ndim         u8       <= MAX_NDIM
    shape        ndim x varint
    patch_ndim   u8       spatial axes of the patch layout
    patch        patch_ndim x varint  (the layout's patch shape)
    model_id     8 bytes  first 8 bytes of the model file's sha256
    n_sections   u8
    sections     n x (tag u8, length varint, payload)
    crc32        u32      zlib.crc32 of every byte before it

Sections: ``L`` entropy-coded latents (patch models), ``G`` entropy-coded latent grids
(grid models; ``patch`` then holds the field shape), ``M`` mask of invalid points (zlib of
packbits), ``R`` error-bounded residual, ``K`` constant-chunk values. Every size read from a header is
bounded before anything is allocated; any inconsistency raises :class:`BitstreamError`.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from .errors import BitstreamError

MAGIC = b"CNPP"
FORMAT_VERSION = 1
MAX_NDIM = 32
#: Largest chunk (elements) written or read: 2^28 values = 1 GiB of float32.
MAX_ELEMENTS = 1 << 28
MODEL_ID_BYTES = 8
DTYPES: tuple[str, ...] = (
    "<f4", "<f8", "<f2", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8",
)
SECTION_TAGS = frozenset(b"LMRKG")


@dataclass
class Chunk:
    """Decoded header plus raw section payloads of one chunk."""

    dtype: np.dtype
    shape: tuple[int, ...]
    patch: tuple[int, ...]
    model_id: bytes
    sections: dict[str, bytes] = field(default_factory=dict)


def dtype_code(dtype: np.dtype) -> int:
    key = np.dtype(dtype).newbyteorder("<").str if np.dtype(dtype).itemsize > 1 else np.dtype(dtype).str
    try:
        return DTYPES.index(key)
    except ValueError:
        raise ValueError(f"dtype {np.dtype(dtype)} cannot be stored by coinpp") from None


def _varint(n: int) -> bytes:
    if n < 0:
        raise ValueError("varint of a negative number")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise BitstreamError(f"chunk is truncated: {what} needs {n} bytes at offset {self.pos}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def varint(self, what: str, limit: int) -> int:
        n, shift = 0, 0
        while True:
            b = self.u8(what)
            n |= (b & 0x7F) << shift
            if n > limit:
                raise BitstreamError(f"{what} = {n} exceeds the limit {limit}")
            if not b & 0x80:
                return n
            shift += 7


def pack(chunk: Chunk) -> bytes:
    """Serialise a :class:`Chunk` to bytes (header, sections, CRC32)."""
    if len(chunk.model_id) != MODEL_ID_BYTES:
        raise ValueError("model_id must be 8 bytes")
    if math.prod(chunk.shape) > MAX_ELEMENTS:
        raise ValueError(
            f"chunk of shape {chunk.shape} has more than {MAX_ELEMENTS} elements; use smaller chunks"
        )
    out = bytearray(MAGIC)
    out += bytes([FORMAT_VERSION, 0, dtype_code(chunk.dtype), len(chunk.shape)])
    for s in chunk.shape:
        out += _varint(s)
    out.append(len(chunk.patch))
    for p in chunk.patch:
        out += _varint(p)
    out += chunk.model_id
    out.append(len(chunk.sections))
    for tag, payload in chunk.sections.items():
        if tag.encode() not in (bytes([t]) for t in SECTION_TAGS):
            raise ValueError(f"unknown section tag {tag!r}")
        out += tag.encode() + _varint(len(payload)) + payload
    out += struct.pack("<I", zlib.crc32(out))
    return bytes(out)


def unpack(data: bytes | bytearray | memoryview) -> Chunk:
    """Parse and verify chunk bytes; raise :class:`BitstreamError` on any problem."""
    data = bytes(data)
    if len(data) < len(MAGIC) + 4:
        raise BitstreamError(f"chunk is truncated or empty ({len(data)} bytes)")
    if data[:4] != MAGIC:
        raise BitstreamError("not a coinpp chunk (bad magic bytes)")
    body, crc = data[:-4], struct.unpack("<I", data[-4:])[0]
    r = _Reader(body)
    r.take(4, "magic")
    version = r.u8("version")
    if version != FORMAT_VERSION:
        raise BitstreamError(
            f"chunk format version {version} is not supported (this build reads {FORMAT_VERSION})"
        )
    if zlib.crc32(body) != crc:
        raise BitstreamError("chunk is corrupted or truncated (CRC32 mismatch)")
    r.u8("flags")
    code = r.u8("dtype")
    if code >= len(DTYPES):
        raise BitstreamError(f"unknown dtype code {code}")
    ndim = r.u8("ndim")
    if ndim > MAX_NDIM:
        raise BitstreamError(f"ndim {ndim} exceeds {MAX_NDIM}")
    shape = tuple(r.varint("shape", MAX_ELEMENTS) for _ in range(ndim))
    if math.prod(shape) > MAX_ELEMENTS:
        raise BitstreamError(f"declared shape {shape} exceeds {MAX_ELEMENTS} elements")
    pnd = r.u8("patch ndim")
    if pnd > ndim:
        raise BitstreamError(f"patch has {pnd} axes but the array only {ndim}")
    patch = tuple(r.varint("patch", MAX_ELEMENTS) for _ in range(pnd))
    if any(p < 1 for p in patch):
        raise BitstreamError(f"invalid patch shape {patch}")
    model_id = r.take(MODEL_ID_BYTES, "model id")
    sections: dict[str, bytes] = {}
    for _ in range(r.u8("section count")):
        tag = r.u8("section tag")
        if tag not in SECTION_TAGS:
            raise BitstreamError(f"unknown section tag {tag}")
        n = r.varint("section length", len(body))
        sections[chr(tag)] = r.take(n, f"section {chr(tag)!r}")
    if r.pos != len(body):
        raise BitstreamError(f"{len(body) - r.pos} unexpected bytes after the last section")
    return Chunk(np.dtype(DTYPES[code]), shape, patch, model_id, sections)


def pack_mask(mask: np.ndarray) -> bytes:
    """Boolean array -> zlib-compressed bit-packed bytes."""
    return zlib.compress(np.packbits(mask.reshape(-1)).tobytes(), 9)


def unpack_mask(payload: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`pack_mask`; the output size is bounded by ``shape``."""
    n = math.prod(shape)
    want = (n + 7) // 8
    try:
        d = zlib.decompressobj()
        raw = d.decompress(payload, want + 1)
    except zlib.error as exc:
        raise BitstreamError(f"mask section is corrupted: {exc}") from exc
    if len(raw) != want:
        raise BitstreamError(f"mask section holds {len(raw)} bytes, expected {want}")
    return np.unpackbits(np.frombuffer(raw, np.uint8), count=n).astype(bool).reshape(shape)
