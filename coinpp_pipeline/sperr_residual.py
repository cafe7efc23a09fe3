"""The hybrid layer: the network's prediction refined by SPERR on its residual (chunk section ``S``).

A grid model tops out below the quality a user may want at low compression ratios (ERA5 msl
near 41 dB). The residual ``x − prediction`` of a chunk ``(B, H, W)`` is then coded by SPERR
(the wavelet compressor, through ``imagecodecs``) at a fixed rate of ``bpv`` bits per value:
as a 2-D field when ``B == 1``, as a 3-D block otherwise. Missing points carry a zero
residual. The section is SPERR's own stream with its header (dimensions, precision), and a
decoder checks those against the chunk's shape before using it.

SPERR crashes the process on some inputs (a 3-D block with an axis of length 1; streams
whose header does not match the data), so the chunk's CRC is verified before this module
sees the bytes, the stored dimensions are checked before decoding, and a 3-D block is only
ever written with every axis >= 2.
"""
from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from .errors import BitstreamError

#: Upper limit of the residual layer's rate (bits per value): beyond it a lossless or
#: error-bounded store is the better tool.
MAX_RESIDUAL_BPV = 16.0


def check_residual_bpv(bpv: float | None) -> float | None:
    """``bpv`` as a float, or a ValueError naming the problem (None passes)."""
    if bpv is None:
        return None
    if isinstance(bpv, bool) or not isinstance(bpv, int | float) or not math.isfinite(bpv) \
            or not 0 < bpv <= MAX_RESIDUAL_BPV:
        raise ValueError(f"residual_bpv must be a number in (0, {MAX_RESIDUAL_BPV:g}] bits per value or None, "
                         f"got {bpv!r}")
    return float(bpv)


def _imagecodecs() -> Any:
    try:
        import imagecodecs
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise ImportError("the SPERR residual layer needs imagecodecs (pip install imagecodecs)") from exc
    if not imagecodecs.SPERR.available:  # pragma: no cover
        raise ImportError("this imagecodecs build has no SPERR")
    return imagecodecs


def _block(shape: tuple[int, int, int]) -> tuple[int, ...]:
    """The array SPERR codes for a chunk of ``shape (B, H, W)``: 2-D for one field, else 3-D."""
    b, h, w = shape
    if h < 2 or w < 2:
        raise ValueError(f"the SPERR residual layer needs fields of at least 2 x 2 points, got {h} x {w}")
    return (h, w) if b == 1 else (b, h, w)


def encode_sperr_residual(residual: np.ndarray, bpv: float) -> bytes:
    """``residual (B, H, W)`` (finite; zero where nothing is to be coded) -> SPERR stream at
    ``bpv`` bits per value."""
    ic = _imagecodecs()
    block = np.ascontiguousarray(residual, dtype=np.float64).reshape(_block(residual.shape))
    if not np.isfinite(block).all():
        raise ValueError("the SPERR residual must be finite")
    return bytes(ic.sperr_encode(block, level=float(bpv), mode="bpp", header=True, numthreads=1))


def decode_sperr_residual(payload: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """Section ``S`` -> the residual ``(B, H, W)`` float64; BitstreamError if the stream's
    header does not describe a block of that shape."""
    ic = _imagecodecs()
    try:
        block = _block(shape)
    except ValueError as exc:  # no encoder writes S for such chunks
        raise BitstreamError(f"chunk holds a SPERR residual for fields it cannot apply to: {exc}") from None
    if _stored_dims(payload, len(block)) != block:
        raise BitstreamError(f"SPERR residual section does not describe a {block} block")
    out = np.asarray(ic.sperr_decode(payload, numthreads=1), dtype=np.float64)
    if out.shape != block or not np.isfinite(out).all():
        raise BitstreamError(f"SPERR residual section decodes to {out.shape}, expected {block}")
    return out.reshape(shape)


#: SPERR's stream header as imagecodecs 2026.3 writes it: a version byte, a flag byte (0x40 set
#: for 3-D), then the dimensions as little-endian u32, fastest first (W, H[, B]). Read only to
#: refuse a stream that does not match the chunk before SPERR sees it.
_FLAG_3D = 0x40


def _stored_dims(payload: bytes, ndim: int) -> tuple[int, ...] | None:
    """The dimensions SPERR's header records (slowest axis first), or None if unreadable."""
    if len(payload) < 2 + 4 * ndim + 1 or bool(payload[1] & _FLAG_3D) != (ndim == 3):
        return None
    return tuple(reversed(struct.unpack_from(f"<{ndim}I", payload, 2)))
