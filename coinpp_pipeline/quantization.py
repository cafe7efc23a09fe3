"""Uniform quantization of latent vectors with per-dimension ranges from training latents."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import NotFittedError


@dataclass(frozen=True)
class Quantizer:
    """Per-dimension uniform quantizer over ``[lo, hi]`` with ``2**bits`` levels.

    ``lo``/``hi``: ``(L,)`` float32, fitted as ``mean ± clip_std·std`` of the training latents
    (narrowed to the observed min/max), so each latent dimension gets its own range (the
    reference code used one global range).
    """

    lo: np.ndarray
    hi: np.ndarray
    bits: int

    @property
    def levels(self) -> int:
        return 1 << self.bits

    @property
    def step(self) -> np.ndarray:
        return ((self.hi - self.lo) / (self.levels - 1)).astype(np.float32)

    @classmethod
    def fit(cls, latents: np.ndarray, bits: int, clip_std: float = 4.0) -> Quantizer:
        """``latents (M, L)`` -> quantizer with ranges per dimension."""
        if latents.ndim != 2 or latents.shape[0] == 0:
            raise NotFittedError("need a non-empty (M, L) array of training latents to fit")
        z = latents.astype(np.float64)
        mean, std = z.mean(0), z.std(0)
        lo = np.maximum(mean - clip_std * std, z.min(0))
        hi = np.minimum(mean + clip_std * std, z.max(0))
        tiny = np.maximum(1e-6, 1e-6 * np.abs(mean))
        hi = np.where(hi - lo < tiny, lo + tiny, hi)
        return cls(lo.astype(np.float32), hi.astype(np.float32), int(bits))

    def quantize(self, latents: np.ndarray) -> np.ndarray:
        """``(M, L)`` float -> ``(M, L)`` int32 symbols in ``[0, levels)``."""
        z = np.clip(latents.astype(np.float32), self.lo, self.hi)
        q = np.rint((z - self.lo) / self.step)
        return np.clip(q, 0, self.levels - 1).astype(np.int32)

    def dequantize(self, symbols: np.ndarray) -> np.ndarray:
        """``(M, L)`` int symbols -> ``(M, L)`` float32 latents."""
        return (self.lo + symbols.astype(np.float32) * self.step).astype(np.float32)
