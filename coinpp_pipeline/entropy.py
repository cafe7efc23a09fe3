"""Entropy coding of quantized latents: one categorical model per latent dimension,
fitted on the quantized training latents, coded with constriction's range coder."""

from __future__ import annotations

from dataclasses import dataclass

import constriction
import numpy as np

from .errors import BitstreamError, NotFittedError


@dataclass(frozen=True)
class EntropyModel:
    """Per-dimension categorical probability model with integer frequency tables.

    ``counts``: ``(L, K)`` int64, every entry >= 1 (add-one smoothing so any symbol is
    codable). Probabilities are ``counts / counts.sum(1)`` in float64 — exact IEEE
    arithmetic, so encoder and decoder build identical fixed-point tables on any machine.
    """

    counts: np.ndarray

    @classmethod
    def fit(cls, symbols: np.ndarray, levels: int) -> EntropyModel:
        """``symbols (M, L)`` ints in ``[0, levels)`` -> fitted model."""
        if symbols.ndim != 2 or symbols.shape[0] == 0:
            raise NotFittedError("need a non-empty (M, L) array of training symbols to fit")
        counts = np.ones((symbols.shape[1], levels), dtype=np.int64)
        for d in range(symbols.shape[1]):
            counts[d] += np.bincount(symbols[:, d], minlength=levels)[:levels]
        return cls(counts)

    @property
    def dims(self) -> int:
        return int(self.counts.shape[0])

    @property
    def levels(self) -> int:
        return int(self.counts.shape[1])

    def _probabilities(self, d: int) -> np.ndarray:
        c = self.counts[d].astype(np.float64)
        return c / c.sum()

    def _models(self) -> list:
        return [
            constriction.stream.model.Categorical(self._probabilities(d), perfect=False)
            for d in range(self.dims)
        ]

    def _check(self, symbols: np.ndarray) -> None:
        if symbols.ndim != 2 or symbols.shape[1] != self.dims:
            raise ValueError(f"symbols of shape {symbols.shape} do not have {self.dims} dims")
        if symbols.size and (symbols.min() < 0 or symbols.max() >= self.levels):
            raise ValueError(f"symbols outside [0, {self.levels})")

    def compress(self, symbols: np.ndarray) -> bytes:
        """``symbols (M, L)`` -> bytes (dimension-major order, 32-bit little-endian words)."""
        self._check(symbols)
        enc = constriction.stream.queue.RangeEncoder()
        for d, model in enumerate(self._models()):
            enc.encode(np.ascontiguousarray(symbols[:, d], dtype=np.int32), model)
        return enc.get_compressed().astype("<u4").tobytes()

    def decompress(self, data: bytes, n: int) -> np.ndarray:
        """Inverse of :meth:`compress` for ``n`` rows: -> ``(n, L)`` int32."""
        if len(data) % 4:
            raise BitstreamError("latent payload length is not a multiple of 4 bytes")
        words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        out = np.empty((n, self.dims), dtype=np.int32)
        try:
            dec = constriction.stream.queue.RangeDecoder(words)
            for d, model in enumerate(self._models()):
                out[:, d] = dec.decode(model, n)
        except Exception as exc:  # constriction raises on malformed streams
            raise BitstreamError(f"latent payload cannot be decoded: {exc}") from exc
        return out

    def cross_entropy_bits(self, symbols: np.ndarray) -> float:
        """Ideal code length of ``symbols (M, L)`` under this model, in bits."""
        self._check(symbols)
        total = 0.0
        for d in range(self.dims):
            p = self._probabilities(d)
            total += float(-np.log2(p[symbols[:, d]]).sum())
        return total
