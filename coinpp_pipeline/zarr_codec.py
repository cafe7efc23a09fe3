"""Native zarr v3 array->bytes codec ``"coinpp"`` (use it as the array's ``serializer``).

::

    zarr.create_array(store, shape=..., chunks=..., dtype="float32", fill_value=np.nan,
                      serializer=COINppZarrCodec(model=sha256, max_abs_error=0.1))

written into ``zarr.json`` as ``{"name": "coinpp", "configuration": {"model": ...,
"model_url": ..., "steps": ..., "max_abs_error": ..., "rel_error": ...}}``; the parameters
mean what they mean for :class:`coinpp_pipeline.codec.COINppCodec` (dtypes, NaN, infinity
and error-bound rules are the same). Readers need ``coinpp-pipeline`` installed (it registers
the codec through the ``zarr.codecs`` entry point) and the model (see
:mod:`coinpp_pipeline.resolve`): zarr gives codecs no access to the store's location, so
models are found by hash in the process registry, ``COINPP_MODEL_PATH`` or ``model_url``.

Batches: zarr hands the codec ``codec_pipeline.batch_size`` chunks at a time (default 1);
:meth:`COINppZarrCodec.decode` decodes a whole batch in one worker thread with
:meth:`Model.decode_many`, so the patches of all chunks of one layout share batched forward
passes; ``encode`` encodes a whole batch in one worker thread with :meth:`Model.encode_many`
(a latent-grid model's encoder batches the chunks' fields; see
:func:`coinpp_pipeline.codec.torch_section`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.buffer import Buffer, NDBuffer
from zarr.core.common import JSON, parse_named_configuration

from .codec import (
    GRID_OPTIONS,
    codec_config,
    decode_bytes,
    decode_many_bytes,
    encode_array,
    encode_arrays,
    grid_options,
)
from .model import Model
from .resolve import resolve_model

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec

_KEYS = ("model", "model_url", "steps", "max_abs_error", "rel_error")


@dataclass(frozen=True)
class COINppZarrCodec(ArrayBytesCodec):
    """zarr v3 serializer compressing each chunk with a COIN++ model (see module docstring)."""

    is_fixed_size = False

    model: str
    model_url: str | None
    steps: int | None
    max_abs_error: float | None
    rel_error: float | None
    rate_weight: float | None
    residual_bpv: float | None

    def __init__(
        self,
        *,
        model: str | Model,
        model_url: str | None = None,
        steps: int | None = None,
        max_abs_error: float | None = None,
        rel_error: float | None = None,
        rate_weight: float | None = None,
        residual_bpv: float | None = None,
    ) -> None:
        for key in GRID_OPTIONS:
            object.__setattr__(self, key, None)
        for key, value in codec_config(model, model_url, steps, max_abs_error, rel_error, rate_weight,
                                       residual_bpv).items():
            object.__setattr__(self, key, value)

    # ------------------------------------------------------------------ metadata
    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        _, configuration = parse_named_configuration(data, "coinpp", require_configuration=True)
        unknown = set(configuration or {}) - {*_KEYS, *GRID_OPTIONS}
        if unknown:
            raise ValueError(f"unknown coinpp codec configuration keys: {sorted(unknown)}")
        return cls(**configuration)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, JSON]:
        return {"name": "coinpp", "configuration": self.config_dict()}

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError

    def _model(self) -> Model:
        return resolve_model(self.model, self.model_url)

    # ------------------------------------------------------------------ sync work
    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return self._wrap(decode_bytes(self._model(), chunk_bytes.to_bytes()), chunk_spec)

    @staticmethod
    def _wrap(arr: np.ndarray, chunk_spec: ArraySpec) -> NDBuffer:
        want = chunk_spec.dtype.to_native_dtype()
        if arr.shape != tuple(chunk_spec.shape):
            raise ValueError(
                f"coinpp chunk holds shape {arr.shape}, but the array's chunks are {chunk_spec.shape}"
            )
        if arr.dtype != want:
            arr = arr.astype(want)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(arr)  # type: ignore[arg-type]

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        arr = np.ascontiguousarray(chunk_array.as_numpy_array())
        data = encode_array(self._model(), arr, self.steps, self.max_abs_error, self.rel_error, self.rate_weight,
                            self.residual_bpv)
        return chunk_spec.prototype.buffer.from_bytes(data)

    def _decode_many(self, items: list[tuple[Buffer | None, ArraySpec]]) -> list[NDBuffer | None]:
        present = [i for i, (b, _) in enumerate(items) if b is not None]
        arrays = decode_many_bytes(self._model(), [items[i][0].to_bytes() for i in present])  # type: ignore[union-attr]
        out: list[NDBuffer | None] = [None] * len(items)
        for i, arr in zip(present, arrays, strict=True):
            out[i] = self._wrap(arr, items[i][1])
        return out

    def _encode_many(self, items: list[tuple[NDBuffer | None, ArraySpec]]) -> list[Buffer | None]:
        present = [i for i, (a, _) in enumerate(items) if a is not None]
        arrays = [items[i][0].as_numpy_array() for i in present]  # type: ignore[union-attr]
        blobs = encode_arrays(self._model(), arrays, self.steps, self.max_abs_error, self.rel_error,
                              self.rate_weight, self.residual_bpv)
        out: list[Buffer | None] = [None] * len(items)
        for i, data in zip(present, blobs, strict=True):
            out[i] = items[i][1].prototype.buffer.from_bytes(data)
        return out

    # ------------------------------------------------------------------ async API
    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    async def decode(
        self, chunks_and_specs: Iterable[tuple[Buffer | None, ArraySpec]]
    ) -> Iterable[NDBuffer | None]:
        """Decode a batch of chunks in one worker thread."""
        return await asyncio.to_thread(self._decode_many, list(chunks_and_specs))

    async def encode(
        self, chunks_and_specs: Iterable[tuple[NDBuffer | None, ArraySpec]]
    ) -> Iterable[Buffer | None]:
        """Encode a batch of chunks in one worker thread."""
        return await asyncio.to_thread(self._encode_many, list(chunks_and_specs))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.config_dict().items())
        return f"{type(self).__name__}({params})"

    def config_dict(self) -> dict[str, Any]:
        """The configuration as a plain dict (same keys as the numcodecs codec)."""
        out = {k: getattr(self, k) for k in _KEYS}
        return out | grid_options(**{k: getattr(self, k) for k in GRID_OPTIONS})
