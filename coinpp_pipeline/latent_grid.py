"""Latent grids: the spatially structured latent of a COIN++ "grid" model.

An item (one 2-D field ``(H, W)``) is represented by ``L`` integer latent grids, level ``l``
of shape ``(ceil(H / f_l), ceil(W / f_l))`` for the factors ``f`` of :class:`GridConfig`
(finest first, each factor twice the previous). The shared synthesis network upsamples every
grid to ``(H, W)``, stacks them with the model's climatology (the training mean field) and
maps each point through a small MLP (1x1 convolutions) plus an optional 3x3 refinement.

Entropy coding uses contexts that are exact integer functions of already-decoded symbols, so
encoder and decoder always agree, on any machine:

* ``cc`` (0..7): the sum of ``|z|`` over the 3x3 neighbourhood of the parent position in the
  next coarser level, binned (:data:`COARSE_BINS`);
* ``ss`` (0..4): the sum of ``|z|`` of the three neighbours in the row above, binned
  (:data:`ROW_BINS`).

Levels are coded coarsest first, each row by row; the probability table of every
``(level, cc, ss)`` is an integer frequency table (:class:`GridEntropyModel`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import constriction
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import BitstreamError, NotFittedError

#: Bin of the coarse-neighbourhood sum 0..18 (larger sums share the last bin).
COARSE_BINS = np.array([0, 1, 2, 3, 3, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 7], np.int64)
#: Bin of the row-above sum 0..5.
ROW_BINS = np.array([0, 1, 2, 3, 3, 4], np.int64)
N_COARSE, N_ROW = 8, 5
MAX_LEVELS = 8


@dataclass(frozen=True)
class GridConfig:
    """Architecture and coding defaults of a latent-grid model.

    * ``factors``: downsampling factor of each latent level, finest first, doubling.
    * ``hidden``: width of the synthesis MLP (two hidden layers).
    * ``conv``: add a 3x3 convolution refining the MLP output.
    * ``upsample``: how latent grids are brought to full resolution.
    * ``max_symbol``: latents are clipped to ``[-max_symbol, max_symbol]``.
    * ``climatology``: the model holds the training mean field and only encodes fields of
      that shape (``field_shape``); False: a scalar mean, any field shape.
    * ``encode_steps``, ``rate_weight``, ``encode_lr``: encoding defaults (the rate weight
      lambda trades rate for distortion: loss = MSE + lambda * bits per value; larger
      lambda = smaller output).
    """

    factors: tuple[int, ...] = (2, 4, 8, 16, 32, 64)
    hidden: int = 32
    conv: bool = True
    upsample: Literal["bicubic", "bilinear"] = "bicubic"
    max_symbol: int = 24
    climatology: bool = True
    field_shape: tuple[int, int] | None = None
    encode_steps: int = 200
    rate_weight: float = 3.0
    encode_lr: float = 0.03

    def __post_init__(self) -> None:
        f = self.factors
        if not 1 <= len(f) <= MAX_LEVELS or f[0] < 1 or any(b != 2 * a for a, b in zip(f, f[1:], strict=False)):
            raise ValueError(f"factors must be 1..{MAX_LEVELS} doubling integers, got {f}")
        if self.hidden < 1 or self.max_symbol < 1 or self.encode_steps < 0:
            raise ValueError("hidden, max_symbol must be >= 1 and encode_steps >= 0")
        if self.upsample not in ("bicubic", "bilinear"):
            raise ValueError(f"upsample must be 'bicubic' or 'bilinear', got {self.upsample!r}")
        if not (math.isfinite(self.rate_weight) and self.rate_weight >= 0):
            raise ValueError(f"rate_weight must be finite and >= 0, got {self.rate_weight}")

    @property
    def levels(self) -> int:
        return len(self.factors)

    def level_shapes(self, shape: tuple[int, int]) -> list[tuple[int, int]]:
        """Latent grid shapes for a field of ``shape (H, W)``, finest first."""
        return [(math.ceil(shape[0] / f), math.ceil(shape[1] / f)) for f in self.factors]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GridConfig:
        d = dict(d)
        d["factors"] = tuple(d["factors"])
        if d.get("field_shape") is not None:
            d["field_shape"] = tuple(d["field_shape"])
        return cls(**d)


# ------------------------------------------------------------------------------ contexts
def coarse_context(coarse: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """``coarse (hc, wc)`` int symbols of the next coarser level -> ``cc (h, w)`` bins."""
    if coarse is None:
        return np.zeros(shape, np.int64)
    a = np.pad(np.abs(coarse.astype(np.int64)), 1)
    s = sum(a[i : i + coarse.shape[0], j : j + coarse.shape[1]] for i in range(3) for j in range(3))
    up = np.repeat(np.repeat(s, 2, axis=0), 2, axis=1)[: shape[0], : shape[1]]
    return COARSE_BINS[np.minimum(up, len(COARSE_BINS) - 1)]


def row_context(prev_row: np.ndarray | None, width: int) -> np.ndarray:
    """Symbols of the row above ``(w,)`` (None for the first row) -> ``ss (w,)`` bins."""
    if prev_row is None:
        return np.zeros(width, np.int64)
    a = np.pad(np.abs(prev_row.astype(np.int64)), 1)
    s = a[:-2] + a[1:-1] + a[2:]
    return ROW_BINS[np.minimum(s, len(ROW_BINS) - 1)]


def row_contexts(z: np.ndarray) -> np.ndarray:
    """``ss`` for every row of ``z (h, w)`` at once (rows above the first are zero)."""
    a = np.pad(np.abs(z.astype(np.int64)), ((1, 0), (1, 1)))[:-1]
    s = a[:, :-2] + a[:, 1:-1] + a[:, 2:]
    return ROW_BINS[np.minimum(s, len(ROW_BINS) - 1)]


def torch_contexts(rounded: Sequence[torch.Tensor], level: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-time contexts of ``rounded[level] (B, h, w)`` (same bins as the coder)."""
    z = rounded[level]
    b, h, w = z.shape
    cbins = torch.as_tensor(COARSE_BINS, device=z.device)
    rbins = torch.as_tensor(ROW_BINS, device=z.device)
    if level + 1 < len(rounded):
        a = F.pad(rounded[level + 1].abs()[:, None], (1, 1, 1, 1))
        s = F.avg_pool2d(a, 3, 1)[:, 0] * 9
        s = s.repeat_interleave(2, 1).repeat_interleave(2, 2)[:, :h, :w]
        cc = cbins[s.round().long().clamp(0, len(COARSE_BINS) - 1)]
    else:
        cc = torch.zeros((b, h, w), dtype=torch.long, device=z.device)
    u = F.pad(z.abs(), (1, 1, 1, 0))[:, :h, :]
    s2 = u[:, :, :w] + u[:, :, 1 : w + 1] + u[:, :, 2 : w + 2]
    ss = rbins[s2.round().long().clamp(0, len(ROW_BINS) - 1)]
    return cc, ss


# ------------------------------------------------------------------------------ network
class GridSynthesis(nn.Module):
    """Latent grids -> field. Parameters: per-level input gains, the MLP, the optional 3x3
    refinement and the rate proxy's Laplace scales ``log_scale (L, N_COARSE, N_ROW)``."""

    def __init__(self, config: GridConfig) -> None:
        super().__init__()
        self.config = config
        n_in = config.levels + (1 if config.climatology else 0)
        h = config.hidden
        self.gain = nn.Parameter(torch.full((config.levels,), 0.1))
        self.mlp = nn.Sequential(
            nn.Conv2d(n_in, h, 1), nn.GELU(), nn.Conv2d(h, h, 1), nn.GELU(), nn.Conv2d(h, 1, 1)
        )
        self.refine = nn.Conv2d(1, 1, 3, padding=1) if config.conv else None
        self.log_scale = nn.Parameter(torch.zeros(config.levels, N_COARSE, N_ROW))

    def forward(self, latents: Sequence[torch.Tensor], clim: torch.Tensor | None,
                shape: tuple[int, int]) -> torch.Tensor:
        """``latents[l] (B, h_l, w_l)``, ``clim (1, 1, H, W)`` or None -> ``(B, H, W)``."""
        mode = self.config.upsample
        ups = [F.interpolate(z[:, None], size=shape, mode=mode, align_corners=False) for z in latents]
        feats = torch.cat(ups, 1) * self.gain[None, :, None, None]
        if self.config.climatology:
            if clim is None:
                raise ValueError("this model needs its climatology field")
            feats = torch.cat([feats, clim.expand(feats.shape[0], -1, -1, -1)], 1)
        out = self.mlp(feats)
        if self.refine is not None:
            out = out + self.refine(out)
        return out[:, 0]

    def rate_bits(self, noisy: Sequence[torch.Tensor], rounded: Sequence[torch.Tensor]) -> torch.Tensor:
        """Differentiable bits ``(B,)`` of noisy latents under a zero-mean Laplace whose scale
        depends on the (integer) contexts of the rounded latents."""
        total = torch.zeros(noisy[0].shape[0], device=noisy[0].device)
        for level, z in enumerate(noisy):
            cc, ss = torch_contexts(rounded, level)
            b = torch.exp(self.log_scale[level][cc, ss])

            def cdf(v: torch.Tensor, b: torch.Tensor = b) -> torch.Tensor:
                return 0.5 + 0.5 * torch.sign(v) * (1 - torch.exp(-v.abs() / b))

            p = (cdf(z + 0.5) - cdf(z - 0.5)).clamp_min(1e-9)
            total = total - torch.log2(p).flatten(1).sum(1)
        return total


# ------------------------------------------------------------------------------ entropy coding
@dataclass(frozen=True)
class GridEntropyModel:
    """Integer frequency tables ``counts (L, N_COARSE, N_ROW, 2K+1)`` (all >= 1), fitted on
    the quantized latents of the training items; probabilities are ``counts / sum`` in
    float64 (exact), so every machine builds the same coding tables."""

    counts: np.ndarray

    @property
    def max_symbol(self) -> int:
        return (int(self.counts.shape[-1]) - 1) // 2

    @property
    def levels(self) -> int:
        return int(self.counts.shape[0])

    @classmethod
    def fit(cls, items: Sequence[Sequence[np.ndarray]], max_symbol: int) -> GridEntropyModel:
        """``items``: per training item, its ``L`` integer grids (finest first)."""
        if not items:
            raise NotFittedError("need quantized training latents to fit the entropy model")
        levels = len(items[0])
        counts = np.ones((levels, N_COARSE, N_ROW, 2 * max_symbol + 1), np.int64)
        for grids in items:
            for lv in range(levels):
                z = np.clip(grids[lv], -max_symbol, max_symbol)
                cc = coarse_context(grids[lv + 1] if lv + 1 < levels else None, z.shape)
                ss = row_contexts(z)
                np.add.at(counts[lv], (cc.ravel(), ss.ravel(), (z + max_symbol).ravel()), 1)
        return cls(counts)

    def _probs(self) -> np.ndarray:
        c = self.counts.astype(np.float64)
        return c / c.sum(axis=-1, keepdims=True)

    def compress(self, items: Sequence[Sequence[np.ndarray]]) -> bytes:
        """Per item, ``L`` int grids in ``[-K, K]`` -> bytes: one level-presence byte per
        item, then the range coder's 32-bit little-endian words."""
        k, probs = self.max_symbol, self._probs()
        model = constriction.stream.model.Categorical(perfect=False)
        enc = constriction.stream.queue.RangeEncoder()
        flags = bytearray()
        for grids in items:
            if len(grids) != self.levels:
                raise ValueError(f"expected {self.levels} latent levels, got {len(grids)}")
            present = 0
            for lv in reversed(range(self.levels)):
                z = grids[lv]
                if np.abs(z).max(initial=0) > k:
                    raise ValueError(f"latent symbols outside [-{k}, {k}]")
                if not z.any():
                    continue
                present |= 1 << lv
                cc = coarse_context(grids[lv + 1] if lv + 1 < self.levels else None, z.shape)
                ss = row_contexts(z)
                p = probs[lv][cc.ravel(), ss.ravel()]
                enc.encode((z.ravel() + k).astype(np.int32), model, p)
            flags.append(present)
        return bytes(flags) + enc.get_compressed().astype("<u4").tobytes()

    def decompress(self, payload: bytes, n_items: int, shapes: Sequence[tuple[int, int]]) -> list[list[np.ndarray]]:
        """Inverse of :meth:`compress` for ``n_items`` items of level ``shapes``."""
        if len(shapes) != self.levels:
            raise BitstreamError(f"expected {self.levels} level shapes, got {len(shapes)}")
        if len(payload) < n_items or (len(payload) - n_items) % 4:
            raise BitstreamError("latent-grid section has an invalid length")
        flags = payload[:n_items]
        if any(f >> self.levels for f in flags):
            raise BitstreamError("latent-grid section names levels the model does not have")
        k, probs = self.max_symbol, self._probs()
        model = constriction.stream.model.Categorical(perfect=False)
        words = np.frombuffer(payload[n_items:], "<u4").astype(np.uint32)
        out: list[list[np.ndarray]] = []
        try:
            dec = constriction.stream.queue.RangeDecoder(words)
            for present in flags:
                grids: list[np.ndarray] = [np.zeros(s, np.int64) for s in shapes]
                for lv in reversed(range(self.levels)):
                    if not present >> lv & 1:
                        continue
                    h, w = shapes[lv]
                    cc = coarse_context(grids[lv + 1] if lv + 1 < self.levels else None, (h, w))
                    z = grids[lv]
                    prev = None
                    for i in range(h):
                        ss = row_context(prev, w)
                        sym = dec.decode(model, probs[lv][cc[i], ss])
                        z[i] = np.asarray(sym, np.int64) - k
                        prev = z[i]
                out.append(grids)
        except BitstreamError:
            raise
        except Exception as exc:  # constriction raises on exhausted or inconsistent data
            raise BitstreamError(f"latent-grid payload cannot be decoded: {exc}") from exc
        return out

