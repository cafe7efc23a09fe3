"""Distortion and rate metrics as the compression community reports them."""

from __future__ import annotations

import math

import numpy as np


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    """Range-normalised PSNR in dB: ``20·log10((max - min) / RMSE)`` over finite points."""
    ok = np.isfinite(reference)
    ref, dec = reference[ok].astype(np.float64), decoded[ok].astype(np.float64)
    rmse = math.sqrt(float(np.mean((ref - dec) ** 2)))
    rng = float(ref.max() - ref.min())
    return math.inf if rmse == 0 else 20.0 * math.log10(rng / rmse)


def max_abs_error(reference: np.ndarray, decoded: np.ndarray) -> float:
    ok = np.isfinite(reference)
    return float(np.abs(reference[ok].astype(np.float64) - decoded[ok]).max())


def bits_per_value(nbytes: int, n_values: int) -> float:
    return 8.0 * nbytes / n_values
