"""Self-describing chunk bytes.

Layout of format version 2, written by this build (little-endian; ``varint`` = unsigned
LEB128)::

    magic        2 bytes  b"C+"
    head         u8       version (low 4 bits, = 2) | flags << 4; flag bit 0 (0x10): the
                          patch layout is the shape's last 2 axes and is not stored
    dtype        u8       index into DTYPES
    ndim         u8       <= MAX_NDIM
    shape        ndim x varint
    patch_ndim   u8       only without flag 0x10: spatial axes of the patch layout
    patch        patch_ndim x varint
    model_id     4 bytes  first 4 bytes of the model file's sha256
    n_sections   u8
    sections     n x (tag u8, length varint, payload); the last section has no length
                 (it runs to the CRC)
    crc32        u32      zlib.crc32 of every byte before it

Format version 1 (still read; written with ``Chunk(version=1)``)::

    magic b"CNPP", version u8 = 1, flags u8 = 0, dtype u8, ndim u8, shape varints,
    patch_ndim u8, patch varints, model_id 8 bytes, n_sections u8,
    n x (tag u8, length varint, payload), crc32 u32

Version 2 exists because at high compression ratios a chunk is tens of bytes: it saves 11-12
bytes per chunk of a latent-grid model (2 magic, 1 head, the 3-5 layout bytes, 4 model-id
bytes, the last section's 1-2 length bytes).

Sections: ``L`` entropy-coded latents (patch models), ``G`` entropy-coded latent grids
(grid models; ``patch`` then holds the field shape), ``M`` mask of invalid points (zlib of
packbits), ``R`` error-bounded residual, ``K`` constant-chunk values, ``P`` basis coefficients
of a grid model with a basis (float16, fields x k, or range-coded), ``Q`` the previous-field
predictor's coefficients of a grid model that has one (float16, one per field after the first),
``S`` the hybrid layer: SPERR's stream of a grid model's residual (:mod:`.sperr_residual`,
applied before ``R``). Every size read from a header is
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
#: Magic bytes of format version 2.
MAGIC2 = b"C+"
#: The version :func:`pack` writes by default; :data:`READ_VERSIONS` are read.
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
#: Flag of the version-2 head byte: the patch layout is the shape's last two axes.
FLAG_TRAILING_PATCH = 0x1
MAX_NDIM = 32
#: Largest chunk (elements) written or read: 2^28 values = 1 GiB of float32.
MAX_ELEMENTS = 1 << 28
#: Model id bytes a caller passes to :func:`pack` (version 1 stores all of them).
MODEL_ID_BYTES = 8
#: Model id bytes stored by version 2 (a prefix of the 8).
MODEL_ID_BYTES_V2 = 4
DTYPES: tuple[str, ...] = (
    "<f4", "<f8", "<f2", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8",
)
SECTION_TAGS = frozenset(b"LMRKGPQSO")


@dataclass
class Chunk:
    """Decoded header plus raw section payloads of one chunk. ``model_id``: 8 bytes when
    packing; after :func:`unpack` the bytes the chunk stores (8 in version 1, 4 in version
    2) — compare with :func:`same_model`."""

    dtype: np.dtype
    shape: tuple[int, ...]
    patch: tuple[int, ...]
    model_id: bytes
    sections: dict[str, bytes] = field(default_factory=dict)
    version: int = FORMAT_VERSION


def same_model(stored: bytes, model_id: bytes) -> bool:
    """Whether a chunk's stored model id (8 or 4 bytes) belongs to the 8-byte ``model_id``."""
    return len(stored) in (MODEL_ID_BYTES, MODEL_ID_BYTES_V2) and model_id[: len(stored)] == stored


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
    """Serialise a :class:`Chunk` to bytes (header, sections, CRC32) in ``chunk.version``."""
    if len(chunk.model_id) != MODEL_ID_BYTES:
        raise ValueError("model_id must be 8 bytes")
    if chunk.version not in READ_VERSIONS:
        raise ValueError(f"chunk format version {chunk.version} cannot be written (known: {READ_VERSIONS})")
    if math.prod(chunk.shape) > MAX_ELEMENTS:
        raise ValueError(
            f"chunk of shape {chunk.shape} has more than {MAX_ELEMENTS} elements; use smaller chunks"
        )
    for tag in chunk.sections:
        if tag.encode() not in (bytes([t]) for t in SECTION_TAGS):
            raise ValueError(f"unknown section tag {tag!r}")
    v2 = chunk.version == 2
    trailing = v2 and len(chunk.patch) == 2 and tuple(chunk.shape[-2:]) == tuple(chunk.patch)
    if v2:
        out = bytearray(MAGIC2)
        out += bytes([2 | (FLAG_TRAILING_PATCH << 4 if trailing else 0), dtype_code(chunk.dtype), len(chunk.shape)])
    else:
        out = bytearray(MAGIC)
        out += bytes([1, 0, dtype_code(chunk.dtype), len(chunk.shape)])
    for s in chunk.shape:
        out += _varint(s)
    if not trailing:
        out.append(len(chunk.patch))
        for p in chunk.patch:
            out += _varint(p)
    out += chunk.model_id[: MODEL_ID_BYTES_V2 if v2 else MODEL_ID_BYTES]
    out.append(len(chunk.sections))
    for i, (tag, payload) in enumerate(chunk.sections.items()):
        last = i == len(chunk.sections) - 1
        out += tag.encode() + (b"" if v2 and last else _varint(len(payload))) + payload
    out += struct.pack("<I", zlib.crc32(out))
    return bytes(out)


def unpack(data: bytes | bytearray | memoryview) -> Chunk:
    """Parse and verify chunk bytes (format version 1 or 2); raise :class:`BitstreamError`
    on any problem."""
    data = bytes(data)
    if len(data) < len(MAGIC) + 4:
        raise BitstreamError(f"chunk is truncated or empty ({len(data)} bytes)")
    if data[:4] == MAGIC:
        version, flags, start, magic_version = data[4], data[5], 6, 1
    elif data[:2] == MAGIC2:
        version, flags, start, magic_version = data[2] & 0x0F, data[2] >> 4, 3, 2
    else:
        raise BitstreamError("not a coinpp chunk (bad magic bytes)")
    if version not in READ_VERSIONS:
        raise BitstreamError(
            f"chunk format version {version} is not supported (this build reads versions "
            f"{', '.join(map(str, READ_VERSIONS))})"
        )
    if version != magic_version:
        raise BitstreamError(
            f"inconsistent chunk header: version {version} under the version-{magic_version} magic bytes"
        )
    body, crc = data[:-4], struct.unpack("<I", data[-4:])[0]
    if zlib.crc32(body) != crc:
        raise BitstreamError("chunk is corrupted or truncated (CRC32 mismatch)")
    if flags & ~(FLAG_TRAILING_PATCH if version == 2 else 0):
        raise BitstreamError(f"unknown header flags {flags:#x}")
    r = _Reader(body)
    r.pos = start
    code = r.u8("dtype")
    if code >= len(DTYPES):
        raise BitstreamError(f"unknown dtype code {code}")
    ndim = r.u8("ndim")
    if ndim > MAX_NDIM:
        raise BitstreamError(f"ndim {ndim} exceeds {MAX_NDIM}")
    shape = tuple(r.varint("shape", MAX_ELEMENTS) for _ in range(ndim))
    if math.prod(shape) > MAX_ELEMENTS:
        raise BitstreamError(f"declared shape {shape} exceeds {MAX_ELEMENTS} elements")
    if flags & FLAG_TRAILING_PATCH:
        if ndim < 2:
            raise BitstreamError(f"a trailing 2-axis layout needs >= 2 axes, the array has {ndim}")
        patch = shape[-2:]
    else:
        pnd = r.u8("patch ndim")
        if pnd > ndim:
            raise BitstreamError(f"patch has {pnd} axes but the array only {ndim}")
        patch = tuple(r.varint("patch", MAX_ELEMENTS) for _ in range(pnd))
    if any(p < 1 for p in patch):
        raise BitstreamError(f"invalid patch shape {patch}")
    model_id = r.take(MODEL_ID_BYTES_V2 if version == 2 else MODEL_ID_BYTES, "model id")
    sections: dict[str, bytes] = {}
    n_sections = r.u8("section count")
    for i in range(n_sections):
        tag = r.u8("section tag")
        if tag not in SECTION_TAGS:
            raise BitstreamError(f"unknown section tag {tag}")
        n = len(body) - r.pos if version == 2 and i == n_sections - 1 else r.varint("section length", len(body))
        sections[chr(tag)] = r.take(n, f"section {chr(tag)!r}")
    if r.pos != len(body):
        raise BitstreamError(f"{len(body) - r.pos} unexpected bytes after the last section")
    return Chunk(np.dtype(DTYPES[code]), shape, patch, model_id, sections, version)


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
