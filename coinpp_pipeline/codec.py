"""numcodecs codec ``"coinpp"``: COIN++ neural compression of whole chunks.

Use it as a zarr v2 compressor (``compressors=[COINppCodec(...)]``, ``filters=None``) or
directly through numcodecs::

    codec = numcodecs.get_codec({"id": "coinpp", "model": sha256, "max_abs_error": 0.1})
    blob = codec.encode(chunk)          # chunk: ndarray (*items, *spatial[, channels])
    back = codec.decode(blob)           # ndarray of the same shape and dtype

Configuration (plain JSON, what zarr writes into the store's metadata):

* ``model``: sha256 (hex) of the model file; the model is found by
  :func:`coinpp_pipeline.resolve.resolve_model` (registered models, ``COINPP_MODEL_PATH``,
  then ``model_url`` under the URL policy described there).
* ``model_url``: where the model file may be fetched from, or None.
* ``steps``: inner-loop steps when encoding (None: the model's default).
* ``max_abs_error``: every decoded finite value is within this absolute bound, or None.
* ``rel_error``: bound relative to each chunk's range of finite values
  (``rel_error * (max - min)``), or None. With both, the tighter bound applies.
* ``rate_weight``: latent-grid models only: the rate–distortion weight lambda used when
  encoding (larger = smaller chunks, lower fidelity); None for the model's default (with an error
  bound and a residual left, the encoder also tries smaller ones and keeps the shortest chunk:
  ``grid_model.BOUNDED_RATE_DIVISOR``, ``BOUNDED_RATE_TRIES``). Written into the
  configuration only when set.
* ``residual_bpv``: latent-grid models only: the hybrid layer — SPERR codes the network's
  residual at this many bits per value (:mod:`coinpp_pipeline.sperr_residual`), for qualities
  above what the network alone reaches (ERA5 msl at ≈ 100×: see the README). Written into the
  configuration only when set.

The chunk must be an ndarray of the chunk's shape (zarr v2 hands compressors the chunk array):
the chunk bytes record dtype and shape, so :meth:`COINppCodec.decode` returns the array itself
(zarr views it with the array's dtype). Supported dtypes: little-endian or native float16/32/64
and (u)int8..64; integers are rounded and clipped on decode. Complex, bool, string and object
arrays, big-endian dtypes and Fortran-ordered chunks are rejected when encoding.

Missing values: NaN is restored exactly (a mask travels in the chunk), all-NaN and constant
chunks are stored exactly. **Infinities are rejected** with a ValueError when encoding: mask
them as NaN first. Edge chunks are padded by zarr with the fill value: prefer a NaN fill value
for float arrays (xarray's default) so padding neither disturbs the fit nor widens the range
used by ``rel_error``.

Only the configuration is state: the loaded model lives in a private attribute, so
``get_config()`` is JSON, equality compares configurations and pickling sends a few hundred
bytes (the model is resolved again by hash in the receiving process).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from numcodecs.abc import Codec
from numcodecs.compat import ensure_bytes, ensure_ndarray_like, ndarray_copy

from .model import Model, check_dtype, check_rate_weight
from .resolve import register_model, resolve_model
from .sperr_residual import check_residual_bpv

#: Configuration keys for latent-grid models, written into configurations only when set.
GRID_OPTIONS = ("rate_weight", "residual_bpv")


def grid_options(rate_weight: float | None = None, residual_bpv: float | None = None) -> dict[str, float]:
    """The :data:`GRID_OPTIONS` that are set (a misspelt key is a TypeError, not dropped)."""
    values = {"rate_weight": rate_weight, "residual_bpv": residual_bpv}
    return {k: float(v) for k, v in values.items() if v is not None}


#: ``"lock"``: one chunk at a time in the torch sections, torch keeps its thread pool (default);
#: ``"single"``: no lock, torch limited to one thread per process so zarr's worker threads run
#: chunks in parallel. Chosen by the ``COINPP_TORCH_POLICY`` environment variable.
TORCH_POLICY_ENV = "COINPP_TORCH_POLICY"
_torch_lock = threading.Lock()
_single_set = False


@contextmanager
def torch_section(inference: bool) -> Iterator[None]:
    """Run torch work from (possibly many) codec threads without oversubscribing the CPU.

    With the default ``"lock"`` policy a process-wide lock serialises the network passes and
    each uses torch's intra-op pool; README "Using the codec" gives the measurements behind this.
    ``inference`` wraps the block in :func:`torch.inference_mode` (decoding only: encoding
    needs autograd for the inner loop).
    """
    global _single_set
    policy = os.environ.get(TORCH_POLICY_ENV, "lock")
    mode = torch.inference_mode() if inference else torch.enable_grad()
    if policy == "single":
        if not _single_set:
            torch.set_num_threads(1)
            _single_set = True
        with mode:
            yield
        return
    with _torch_lock, mode:
        yield


def check_array(arr: np.ndarray) -> None:
    """Raise a clear error for arrays coinpp cannot encode (dtype, byte order)."""
    check_dtype(arr.dtype)
    dt = arr.dtype
    if dt.byteorder == ">" or (dt.byteorder == "=" and not np.little_endian):
        raise TypeError(f"coinpp needs little-endian data; got dtype {dt.str}: use {dt.newbyteorder('<').str}")


def chunk_bound(arr: np.ndarray, max_abs_error: float | None, rel_error: float | None) -> float | None:
    """The absolute error bound for one chunk: the tighter of ``max_abs_error`` and
    ``rel_error × (max − min)`` of its finite values; None when no bound applies or the
    chunk is constant/empty (stored exactly anyway)."""
    bounds = []
    if max_abs_error is not None:
        bounds.append(float(max_abs_error))
    if rel_error is not None and arr.size:
        x = arr.astype(np.float64, copy=False)
        finite = x[np.isfinite(x)] if arr.dtype.kind == "f" else x.reshape(-1)
        if finite.size:
            span = float(finite.max() - finite.min())
            if span > 0:
                bounds.append(float(rel_error) * span)
    return min(bounds) if bounds else None


def encode_array(
    model: Model,
    arr: np.ndarray,
    steps: int | None,
    max_abs_error: float | None,
    rel_error: float | None,
    rate_weight: float | None = None,
    residual_bpv: float | None = None,
) -> bytes:
    """Compress one chunk ``arr (*items, *spatial[, C])`` with the codec's parameters."""
    return encode_arrays(model, [arr], steps, max_abs_error, rel_error, rate_weight, residual_bpv)[0]


def encode_arrays(
    model: Model,
    arrs: list[np.ndarray],
    steps: int | None,
    max_abs_error: float | None,
    rel_error: float | None,
    rate_weight: float | None = None,
    residual_bpv: float | None = None,
) -> list[bytes]:
    """:func:`encode_array` of several chunks at once: a latent-grid model batches their
    fields through the encoder (:meth:`Model.encode_many`); each chunk keeps its own bound."""
    checked = []
    for arr in arrs:
        check_array(arr)
        checked.append(np.ascontiguousarray(arr))
    bounds = [chunk_bound(a, max_abs_error, rel_error) for a in checked]
    with torch_section(inference=False):
        return model.encode_many(checked, steps=steps, max_abs_error=bounds,
                                 **grid_options(rate_weight=rate_weight, residual_bpv=residual_bpv))


def decode_bytes(model: Model, data: bytes) -> np.ndarray:
    """Chunk bytes -> array (shape and dtype recorded in the chunk)."""
    with torch_section(inference=True):
        return model.decode(data)


def decode_many_bytes(model: Model, blobs: list[bytes]) -> list[np.ndarray]:
    """Several chunks at once: chunks of one layout share batched forward passes."""
    with torch_section(inference=True):
        return model.decode_many(blobs)


def validate_params(
    model: str, model_url: str | None, steps: int | None, max_abs_error: float | None, rel_error: float | None,
    rate_weight: float | None = None, residual_bpv: float | None = None,
) -> None:
    if not isinstance(model, str) or len(model) != 64:
        raise ValueError(f"model must be the 64-hex-digit sha256 of a model file, got {model!r}")
    try:
        bytes.fromhex(model)
    except ValueError:
        raise ValueError(f"model must be a sha256 in hex, got {model!r}") from None
    if model_url is not None and not isinstance(model_url, str):
        raise ValueError(f"model_url must be a string or None, got {model_url!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise ValueError(f"steps must be a non-negative integer or None, got {steps!r}")
    for name, v in (("max_abs_error", max_abs_error), ("rel_error", rel_error)):
        if v is not None and (
            isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0
        ):
            raise ValueError(f"{name} must be a positive finite number or None, got {v!r}")
    if rate_weight is not None:
        check_rate_weight(rate_weight)
    check_residual_bpv(residual_bpv)


def codec_config(
    model: str | Model,
    model_url: str | None,
    steps: int | None,
    max_abs_error: float | None,
    rel_error: float | None,
    rate_weight: float | None = None,
    residual_bpv: float | None = None,
) -> dict[str, Any]:
    """Validated, normalised codec parameters (a :class:`Model` is registered in this process
    and replaced by its sha256) — shared by the numcodecs and the zarr v3 codec."""
    if isinstance(model, Model):
        model = register_model(model)
    model = model.lower() if isinstance(model, str) else model
    validate_params(model, model_url, steps, max_abs_error, rel_error, rate_weight, residual_bpv)
    return {
        "model": model,
        "model_url": model_url,
        "steps": steps,
        "max_abs_error": None if max_abs_error is None else float(max_abs_error),
        "rel_error": None if rel_error is None else float(rel_error),
        **grid_options(rate_weight=rate_weight, residual_bpv=residual_bpv),
    }


class COINppCodec(Codec):
    """numcodecs codec applying a meta-learned COIN++ model to whole chunks.

    Args:
        model: sha256 of the model file, or a :class:`Model` (registered in this process and
            replaced by its sha256 in the configuration).
        model_url: where readers may fetch the model file (see :mod:`coinpp_pipeline.resolve`).
        steps: inner-loop steps when encoding; None for the model's default.
        max_abs_error: absolute error bound for every finite value, or None.
        rel_error: error bound relative to each chunk's value range, or None.
        rate_weight: rate–distortion weight for latent-grid models (None: model default).
        residual_bpv: latent-grid models: bits per value of the SPERR residual layer, or None.
    """

    codec_id = "coinpp"

    def __init__(
        self,
        model: str | Model,
        model_url: str | None = None,
        steps: int | None = None,
        max_abs_error: float | None = None,
        rel_error: float | None = None,
        rate_weight: float | None = None,
        residual_bpv: float | None = None,
    ) -> None:
        for key, value in codec_config(model, model_url, steps, max_abs_error, rel_error, rate_weight,
                                       residual_bpv).items():
            setattr(self, key, value)
        self._model: Model | None = model if isinstance(model, Model) else None

    # ------------------------------------------------------------------ state
    def __getstate__(self) -> dict[str, Any]:
        return self.get_config()

    def __setstate__(self, state: dict[str, Any]) -> None:
        config = dict(state)
        config.pop("id", None)
        self.__init__(**config)  # type: ignore[misc]

    def load_model(self) -> Model:
        """The codec's model, resolved (and verified) on first use."""
        if self._model is None:
            self._model = resolve_model(self.model, self.model_url)
        return self._model

    # ------------------------------------------------------------------ codec API
    def encode(self, buf: Any) -> bytes:
        """Compress one chunk; ``buf`` must be an ndarray with the chunk's shape."""
        arr = ensure_ndarray_like(buf)
        if not isinstance(arr, np.ndarray):
            arr = np.asarray(arr)
        if arr.ndim > 1 and arr.flags.f_contiguous and not arr.flags.c_contiguous:
            raise ValueError(
                "coinpp needs C-ordered chunks (zarr v2 order='C'); got a Fortran-ordered array"
            )
        return encode_array(self.load_model(), arr, self.steps, self.max_abs_error, self.rel_error,
                            getattr(self, "rate_weight", None), getattr(self, "residual_bpv", None))

    def decode(self, buf: Any, out: Any = None) -> Any:
        """Decompress one chunk; returns the array, or fills ``out`` (same number of bytes)."""
        arr = decode_bytes(self.load_model(), ensure_bytes(buf))
        if out is None:
            return arr
        dst = ensure_ndarray_like(out)
        if dst.nbytes != arr.nbytes:
            raise ValueError(
                f"out has {dst.nbytes} bytes but the decoded chunk {arr.shape} {arr.dtype} has "
                f"{arr.nbytes}"
            )
        return ndarray_copy(arr, out)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "id")
        return f"{type(self).__name__}({params})"
