"""Quantized, entropy-coded basis coefficients (chunk section ``P``, format 1).

A grid model with a basis (:func:`~coinpp_pipeline.grid_model.fit_basis`) stores ``k``
coefficients per field. Format 0 keeps them as float16 (``2 k`` bytes per field); this
module's :class:`CoefficientCoder` quantizes them with one uniform step per chunk and
range-codes the integers under a discretised Laplace per basis component.

* Step: ``delta = 2 ** (8 - e / 4)`` in the model's normalised units, ``e`` in
  ``[0, STEP_CODE_MAX]`` stored as one byte. The encoder takes ``e`` from the rate weight
  (:func:`step_code`): the basis components have unit RMS per point, so a coefficient's
  rounding error adds ``delta**2 / 12`` to the field's MSE whatever the component, and the
  step minimising ``MSE + rate_weight * bits / points`` is ``sqrt(6 rate_weight / (points ln 2))``.
* Prior: component ``j``'s Laplace scale is ``2 ** (g_j / 4)`` normalised units, ``g_j``
  (the model's integer *scale codes*) from the training fields' coefficients
  (:meth:`CoefficientCoder.fit`); in symbols that is ``2 ** (t / 4)`` with
  ``t = g_j + e - 32``, clipped to :data:`SCALE_CODES`.
* Integer-exact tables: each ``t`` has integer frequencies over ``[-MAX_SYMBOL, MAX_SYMBOL]``
  from an integer recursion (``f(n + 1) = max(1, f(n) * R_t >> 32)``); only ``R_t`` and
  ``f(1)`` come from floating-point maths, once per ``t`` (their values are pinned by a test),
  so any machine decodes the same integers.
* Payload (after the section's format byte): ``u8 e``, then constriction range-coder words
  (``<u4``) of the ``items x k`` symbols, component-major (each component's symbols under its
  one table).

Measured (t2m, 16 components, the 7 held-out fields, post-hoc at the encoder's step,
``benchmarks/prototypes/README.md`` session 17): 33 B -> about 11-13 B per field, -0.00 to
-0.01 dB.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from typing import Any

import constriction
import numpy as np

from .errors import BitstreamError

#: Largest step code: ``delta = 2 ** (8 - e / 4)`` runs from 256 (``e = 0``) down to ``2 ** -9``.
STEP_CODE_MAX = 68
#: Coefficients are quantized to ``[-MAX_SYMBOL, MAX_SYMBOL]`` steps (at the finest step,
#: +-8 normalised units; larger coefficients are clipped there).
MAX_SYMBOL = 4095
#: Range of ``t`` (Laplace scale ``2 ** (t / 4)`` symbols) with its own table.
SCALE_CODES = (-16, 56)
_F0 = 1 << 30


def step_size(e: int) -> float:
    """Quantization step of step code ``e`` (normalised units)."""
    return 2.0 ** (8 - e / 4)


def step_code(rate_weight: float, points: int) -> int:
    """The encoder's step code for ``rate_weight`` on fields of ``points`` points: the step
    nearest (in quarter octaves) to ``sqrt(6 rate_weight / (points ln 2))``."""
    if rate_weight <= 0:
        return STEP_CODE_MAX
    delta = math.sqrt(6.0 * rate_weight / (max(points, 1) * math.log(2.0)))
    return int(min(max(round(4 * (8 - math.log2(delta))), 0), STEP_CODE_MAX))


@functools.cache
def _frequencies(t: int) -> np.ndarray:
    """Integer frequencies ``(MAX_SYMBOL + 1,)`` of magnitudes ``0 .. MAX_SYMBOL`` for a
    discretised Laplace of scale ``2 ** (t / 4)`` symbols (each side's; all >= 1)."""
    rho = math.exp(-(2.0 ** (-t / 4)))
    ratio = int(rho * 2.0**32)
    f = np.ones(MAX_SYMBOL + 1, np.int64)
    f[0] = _F0
    v = int(_F0 * 0.5 * math.sqrt(rho) * (1 + math.sqrt(rho)))  # P(1) / P(0) of the discretised Laplace
    for n in range(1, MAX_SYMBOL + 1):
        if v <= 1:
            break
        f[n] = v
        v = (v * ratio) >> 32
    return f


@functools.cache
def _probabilities(t: int) -> np.ndarray:
    """``(2 MAX_SYMBOL + 1,)`` float64 probabilities of symbols ``-MAX_SYMBOL .. MAX_SYMBOL``
    (exact quotients of integers)."""
    f = _frequencies(t)
    row = np.concatenate([f[:0:-1], f]).astype(np.float64)
    return row / row.sum()


@functools.cache
def _model(t: int) -> Any:
    """The constriction model of scale ``t`` (built once per process)."""
    return constriction.stream.model.Categorical(_probabilities(t), perfect=False)


def table_digest() -> str:
    """sha256 of every scale's integer frequencies (pinned in the tests: the tables are the
    chunk format)."""
    h = hashlib.sha256()
    for t in range(SCALE_CODES[0], SCALE_CODES[1] + 1):
        h.update(_frequencies(t).astype("<i8").tobytes())
    return h.hexdigest()


@dataclasses.dataclass(frozen=True, eq=False)
class CoefficientCoder:
    """Per basis component, the integer scale code ``g_j`` of its Laplace prior
    (``2 ** (g_j / 4)`` normalised units): ``scale_codes (k,)`` int64."""

    scale_codes: np.ndarray

    def __post_init__(self) -> None:
        g = np.asarray(self.scale_codes)
        if g.ndim != 1 or g.size == 0 or not np.issubdtype(g.dtype, np.integer):
            raise ValueError(f"scale codes must be a non-empty 1-D integer array, got {g.dtype} {g.shape}")
        if np.abs(g).max() > 128:
            raise ValueError(f"scale codes must lie in [-128, 128], got {g.min()} .. {g.max()}")
        object.__setattr__(self, "scale_codes", g.astype(np.int64))

    @property
    def components(self) -> int:
        return int(self.scale_codes.size)

    @classmethod
    def fit(cls, coeffs: np.ndarray) -> CoefficientCoder:
        """From training coefficients ``(N, k)`` (normalised units): each component's Laplace
        scale ``RMS / sqrt(2)``, to the nearest quarter octave."""
        c = np.asarray(coeffs, np.float64)
        if c.ndim != 2 or c.shape[0] == 0 or c.shape[1] == 0 or not np.isfinite(c).all():
            raise ValueError(f"training coefficients must be finite (N, k), got shape {c.shape}")
        b = np.maximum(np.sqrt((c**2).mean(0) / 2), 2.0**-30)
        return cls(np.clip(np.round(4 * np.log2(b)), -128, 128).astype(np.int64))

    def quantize(self, coeffs: np.ndarray, e: int) -> np.ndarray:
        """Coefficients ``(B, k)`` -> integer symbols ``(B, k)`` at step code ``e`` (clipped)."""
        q = np.round(np.asarray(coeffs, np.float64) / step_size(e))
        return np.clip(np.nan_to_num(q), -MAX_SYMBOL, MAX_SYMBOL).astype(np.int64)

    def dequantize(self, q: np.ndarray, e: int) -> np.ndarray:
        """Symbols ``(B, k)`` -> coefficients ``(B, k)`` float32."""
        return (np.asarray(q, np.float64) * step_size(e)).astype(np.float32)

    def _table_codes(self, e: int) -> list[int]:
        """Per component, the scale code of its table at step code ``e``."""
        return [int(v) for v in np.clip(self.scale_codes + e - 32, *SCALE_CODES)]

    def _models(self, e: int) -> list[Any]:
        """Per component, its constriction model at step code ``e``."""
        return [_model(t) for t in self._table_codes(e)]

    def compress(self, q: np.ndarray, e: int) -> bytes:
        """Symbols ``(B, k)`` at step code ``e`` -> payload (``u8 e`` + range-coder words)."""
        q = np.asarray(q)
        if q.ndim != 2 or q.shape[1] != self.components:
            raise ValueError(f"expected coefficient symbols (B, {self.components}), got {q.shape}")
        if not 0 <= e <= STEP_CODE_MAX:
            raise ValueError(f"step code must lie in [0, {STEP_CODE_MAX}], got {e}")
        if np.abs(q).max(initial=0) > MAX_SYMBOL:
            raise ValueError(f"coefficient symbols outside [-{MAX_SYMBOL}, {MAX_SYMBOL}]")
        enc = constriction.stream.queue.RangeEncoder()
        if q.size:
            for j, model in enumerate(self._models(e)):
                enc.encode((q[:, j] + MAX_SYMBOL).astype(np.int32), model)
        return bytes([e]) + enc.get_compressed().astype("<u4").tobytes()

    def decompress(self, payload: bytes, items: int) -> tuple[np.ndarray, int]:
        """Inverse of :meth:`compress`: ``(symbols (items, k) int64, e)``; raises
        :class:`BitstreamError` on a malformed payload."""
        if len(payload) < 1 or (len(payload) - 1) % 4:
            raise BitstreamError(f"coded basis coefficients: invalid length {len(payload)}")
        e = payload[0]
        if e > STEP_CODE_MAX:
            raise BitstreamError(f"coded basis coefficients: step code {e} > {STEP_CODE_MAX}")
        n = items * self.components
        if n == 0:
            return np.zeros((items, self.components), np.int64), e
        if len(payload) == 1:  # the encoder always flushes at least one word
            raise BitstreamError(f"coded basis coefficients: no range-coder words for {n} symbols")
        try:
            dec = constriction.stream.queue.RangeDecoder(np.frombuffer(payload, "<u4", offset=1).astype(np.uint32))
            sym = np.stack([np.asarray(dec.decode(model, items), np.int64) for model in self._models(e)], 1)
        except Exception as exc:  # constriction raises on exhausted or inconsistent data
            raise BitstreamError(f"coded basis coefficients cannot be decoded: {exc}") from exc
        return sym - MAX_SYMBOL, e

    def code_length_bits(self, q: np.ndarray, e: int) -> float:
        """Ideal code length (bits) of symbols ``(B, k)`` at step code ``e``."""
        q = np.asarray(q, np.int64)
        return float(-sum(np.log2(_probabilities(t)[q[:, j] + MAX_SYMBOL]).sum()
                          for j, t in enumerate(self._table_codes(e))))

    def to_tensors(self) -> dict[str, Any]:
        return {"coeffs.scale": self.scale_codes.astype(np.int64)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Any]) -> CoefficientCoder:
        return cls(np.asarray(tensors["coeffs.scale"]).reshape(-1).astype(np.int64))
