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
  (:data:`ROW_BINS`);
* ``causal`` scheme only (the default for new models): ``lf`` (0..2) the
  left neighbour clipped to ``-1..1`` (+1) and ``us`` (0..2) the sign of the neighbour above
  (+1).

Levels are coded coarsest first. The ``row`` scheme codes each level row by row; the
``causal`` scheme along anti-diagonals ``t = col + 2 * row`` (every context neighbour of a
symbol lies on an earlier diagonal, so a whole diagonal of all the chunk's fields decodes at
once) and range-codes the level-presence bits instead of storing a flag byte per field. The
probability table of every context is an integer frequency table (:class:`GridEntropyModel`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import constriction
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import BitstreamError, NotFittedError
from .model import check_rate_weight

if TYPE_CHECKING:
    from .latent_arm import LatentARM

#: Bin of the coarse-neighbourhood sum 0..18 (larger sums share the last bin).
COARSE_BINS = np.array([0, 1, 2, 3, 3, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 7], np.int64)
#: Bin of the row-above sum 0..5.
ROW_BINS = np.array([0, 1, 2, 3, 3, 4], np.int64)
N_COARSE, N_ROW = 8, 5
#: States of the causal scheme's extra contexts: left neighbour clipped to -1..1, sign above.
N_LEFT, N_UP = 3, 3
MAX_LEVELS = 8
#: Weight of the parent distribution when fitting the causal scheme's tables.
BACKOFF = 2.0
Scheme = Literal["row", "causal"]
#: Context-table shape (without the symbol axis) of each scheme.
CONTEXT_SHAPE: dict[str, tuple[int, ...]] = {"row": (N_COARSE, N_ROW), "causal": (N_COARSE, N_ROW, N_LEFT, N_UP)}


@dataclass(frozen=True)
class GridConfig:
    """Architecture and coding defaults of a latent-grid model.

    * ``factors``: downsampling factor of each latent level, finest first, doubling.
    * ``hidden``: width of the synthesis MLP (two hidden layers).
    * ``conv``: add a 3x3 convolution refining the MLP output.
    * ``refine_channels``: 0 = that refinement is one 3x3 convolution of the output (1 -> 1);
      ``C > 0``: the MLP ends in ``C`` channels, refined by two 3x3 convolutions
      (``C -> C``, GELU, ``C -> 1``) added to a 1x1 projection ``C -> 1`` (needs ``conv``).
    * ``upsample``: how latent grids are brought to full resolution.
    * ``max_symbol``: latents are clipped to ``[-max_symbol, max_symbol]``.
    * ``climatology``: the model holds the training mean field and only encodes fields of
      that shape (``field_shape``); False: a scalar mean, any field shape.
    * ``encode_steps``, ``rate_weight``, ``encode_lr``: encoding defaults (the rate weight
      lambda trades rate for distortion: loss = MSE + lambda * bits per value; larger
      lambda = smaller output).
    * ``encode_noise_fraction``: share (0 < f <= 1) of the encoder's steps that use additive
      uniform noise for rounding; the rest anneal the rounding (stochastic Gumbel
      annealing). Models trained with annealing in the loop encode best with a small share.
    * ``contexts``: the entropy-context scheme (``"causal"``: coarse, row-above, left
      neighbour and sign above; ``"row"``: coarse and row-above only, the format of model
      files that do not name a scheme).
    * ``analysis_channels``: 0 = the encoder starts from zero latents; ``C > 0``: the model
      holds an analysis network (:class:`GridAnalysis`, ``C`` channels per level, fitted by
      ``grid_model.fit_analysis``) whose guess is the encoder's starting point when it runs
      fewer than ``encode_steps`` steps — with ``steps=0`` the guess itself is the encoding
      (no gradient steps). At ``encode_steps`` or more it starts from zeros, as without.
      Decoding is the same.
    * ``basis``: 0 = none; ``k > 0``: the synthesis adds ``sum_j c_j B_j`` to its output,
      ``B (k, H, W)`` the top principal components of the training anomalies (a buffer of
      the network, :func:`~coinpp_pipeline.grid_model.fit_basis`), and every field stores
      its ``k`` coefficients ``c`` (chunk section ``P``: quantized and range-coded with the
      model's coefficient coder, else float16), fitted with the latents.
      Needs ``climatology``.
    * ``predict_previous``: each field of a chunk after the first also adds ``c P``, ``P``
      the previous field's decoded (normalised) output — less its projection on the basis,
      at unit RMS — and ``c`` one coefficient per field fitted with the latents (chunk
      section ``Q``, float16). For chunks along time: consecutive fields' residuals after
      the basis correlate 0.66–0.95 on the ERA5 sample. Encoding and decoding then run
      field after field.
    * ``encode_rate``: the encoder's rate term — ``"tables"``: the Laplace per table context
      (``log_scale`` / ``loc``); ``"arm"``: the model's learned autoregressive coder
      (:meth:`~coinpp_pipeline.latent_arm.LatentARM.torch_bits`; needs one). With an ARM
      that has the item context a chunk's items are encoded one after the other, each
      knowing its predecessor's latents (on a time-chunked t2m archive +0.24 dB at the same
      ratio, session 20).
    * ``constant_rows``: rows of the field that hold one value per field — the poles of a
      latitude–longitude grid that includes them (ERA5's first and last rows). A chunk whose
      fields are constant along those rows stores each such row's value (normalised,
      float16, chunk section ``O``); the encoder leaves those rows out of its loss and every
      decoded field carries the stored values there. A chunk whose rows are not constant is
      coded as without (no section ``O``). Needs ``field_shape``.
    """

    factors: tuple[int, ...] = (2, 4, 8, 16, 32, 64)
    hidden: int = 32
    conv: bool = True
    refine_channels: int = 0
    upsample: Literal["bicubic", "bilinear"] = "bicubic"
    max_symbol: int = 24
    climatology: bool = True
    field_shape: tuple[int, int] | None = None
    encode_steps: int = 200
    rate_weight: float = 3.0
    encode_lr: float = 0.03
    contexts: Scheme = "causal"
    encode_noise_fraction: float = 0.5
    analysis_channels: int = 0
    basis: int = 0
    encode_rate: Literal["tables", "arm"] = "tables"
    predict_previous: bool = False
    constant_rows: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        f = self.factors
        if not 1 <= len(f) <= MAX_LEVELS or f[0] < 1 or any(b != 2 * a for a, b in zip(f, f[1:], strict=False)):
            raise ValueError(f"factors must be 1..{MAX_LEVELS} doubling integers, got {f}")
        if self.hidden < 1 or self.max_symbol < 1 or min(self.encode_steps, self.refine_channels, self.analysis_channels) < 0:
            raise ValueError("hidden, max_symbol must be >= 1; encode_steps, refine_channels, analysis_channels >= 0")
        if self.basis < 0 or (self.basis and not self.climatology):
            raise ValueError(f"basis must be >= 0 and needs climatology=True, got {self.basis}")
        if not isinstance(self.predict_previous, bool):
            raise ValueError(f"predict_previous must be a bool, got {self.predict_previous!r}")
        if self.encode_rate not in ("tables", "arm"):
            raise ValueError(f"encode_rate must be 'tables' or 'arm', got {self.encode_rate!r}")
        if self.refine_channels and not self.conv:
            raise ValueError("refine_channels needs conv=True")
        if self.contexts not in CONTEXT_SHAPE:
            raise ValueError(f"contexts must be 'causal' or 'row', got {self.contexts!r}")
        if self.upsample not in ("bicubic", "bilinear"):
            raise ValueError(f"upsample must be 'bicubic' or 'bilinear', got {self.upsample!r}")
        check_rate_weight(self.rate_weight)
        rows = self.constant_rows
        if not isinstance(rows, tuple) or any(isinstance(r, bool) or not isinstance(r, int) for r in rows) \
                or list(rows) != sorted(set(rows)) or (rows and rows[0] < 0):
            raise ValueError(f"constant_rows must be a tuple of increasing row indices >= 0, got {rows!r}")
        if rows and (self.field_shape is None or rows[-1] >= self.field_shape[0]):
            raise ValueError(f"constant_rows {rows} need a field_shape with more rows, got {self.field_shape}")
        if not (math.isfinite(self.encode_lr) and self.encode_lr > 0):
            raise ValueError(f"encode_lr must be a finite number > 0, got {self.encode_lr}")
        if not 0 < self.encode_noise_fraction <= 1:
            raise ValueError(f"encode_noise_fraction must be in (0, 1], got {self.encode_noise_fraction}")

    @property
    def levels(self) -> int:
        return len(self.factors)

    def level_shapes(self, shape: tuple[int, int]) -> list[tuple[int, int]]:
        """Latent grid shapes for a field of ``shape (H, W)``, finest first."""
        return [(math.ceil(shape[0] / f), math.ceil(shape[1] / f)) for f in self.factors]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON config; fields added after the first grid models are left out when
        they hold the value older files imply, so those files re-serialise byte for byte."""
        d = asdict(self)
        for key, implied in _IMPLIED.items():
            if d[key] == implied:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GridConfig:
        d = dict(d)
        d["factors"] = tuple(d["factors"])
        if d.get("field_shape") is not None:
            d["field_shape"] = tuple(d["field_shape"])
        if "constant_rows" in d:
            d["constant_rows"] = tuple(d["constant_rows"])
        for key, implied in _IMPLIED.items():
            d.setdefault(key, implied)
        return cls(**d)


#: Config fields newer than the first grid model files, and the value a file without them means.
_IMPLIED: dict[str, Any] = {"refine_channels": 0, "contexts": "row", "encode_noise_fraction": 0.5,
                            "analysis_channels": 0, "basis": 0, "encode_rate": "tables",
                            "predict_previous": False, "constant_rows": ()}


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


def level_contexts(grids: Sequence[np.ndarray], level: int, scheme: str) -> tuple[np.ndarray, ...]:
    """Context indices, each ``(h, w)``, of every symbol of ``grids[level] (h, w)`` given the
    coarser ``grids[level + 1]``: ``(cc, ss)`` or, for ``causal``, ``(cc, ss, lf, us)``."""
    z = grids[level].astype(np.int64)
    cc = coarse_context(grids[level + 1] if level + 1 < len(grids) else None, z.shape)
    ss = row_contexts(z)
    if scheme == "row":
        return cc, ss
    zp = np.pad(z, ((1, 0), (1, 0)))
    return cc, ss, np.clip(zp[1:, :-1], -1, 1) + 1, np.sign(zp[:-1, 1:]) + 1


def diagonal_order(shape: tuple[int, int, int]) -> np.ndarray:
    """Flat indices of ``m`` stacked ``(h, w)`` grids ``(m, h, w)`` in the causal scheme's
    coding order: diagonals ``t = col + 2 * row`` ascending; within a diagonal, items
    ascending, then rows ascending."""
    i, r, c = np.indices(shape)
    return np.lexsort((r.ravel(), i.ravel(), (c + 2 * r).ravel()))


@functools.lru_cache(maxsize=8)
def _context_bins(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # made once per device: a fresh copy each step is a host-to-device copy that waits for the GPU
    with torch.inference_mode(False), torch.no_grad():
        return torch.as_tensor(COARSE_BINS, device=device), torch.as_tensor(ROW_BINS, device=device)


def torch_contexts(rounded: Sequence[torch.Tensor], level: int, scheme: str = "row") -> tuple[torch.Tensor, ...]:
    """Training-time contexts of ``rounded[level] (B, h, w)`` (same bins as the coder)."""
    z = rounded[level]
    b, h, w = z.shape
    cbins, rbins = _context_bins(z.device)
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
    if scheme == "row":
        return cc, ss
    zr = z.round().long()
    lf = F.pad(zr, (1, 0))[:, :, :w].clamp(-1, 1) + 1
    us = torch.sign(F.pad(zr, (0, 0, 1, 0))[:, :h, :]) + 1
    return cc, ss, lf, us


def table_lookup(table: torch.Tensor, ctx: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``table[ctx]``: a table ``(n_1, ..., n_c)`` at ``c`` integer index tensors of one shape,
    as an embedding lookup. Same values and gradient as indexing, but the backward sums the
    many points that share an entry by sorting rather than by atomic adds, which on a GPU
    made indexing's backward 88 % of an encoder step (a few hundred entries, 10^5-10^6 points
    each step; session 19)."""
    flat = ctx[0]
    for dim, c in enumerate(ctx[1:], 1):
        flat = flat * table.shape[dim] + c
    return F.embedding(flat, table.reshape(-1, 1)).squeeze(-1)


# ------------------------------------------------------------------------------ network
#: Largest cost, in multiply-adds per output point (``h*w/W + w`` for a level ``(h, w)``
#: upsampled to ``(H, W)``), at which a level is upsampled by dense matrix products (fast
#: matmul kernels) rather than ``F.interpolate`` (16 taps per point, slow backward on CPU).
#: A 181x360 field's finest level (91x180) costs 226.
DENSE_UPSAMPLE_MACS = 256


@functools.lru_cache(maxsize=256)
def _interp_matrix(n_in: int, n_out: int, mode: str, device: torch.device) -> torch.Tensor:
    # a normal tensor even when first built under inference_mode, so that a later autograd
    # pass (the encoder, training) may save it for backward
    with torch.inference_mode(False), torch.no_grad():
        eye = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, n_in, 1)
        cols = F.interpolate(eye, size=(n_out, 1), mode=mode, align_corners=False)[:, 0, :, 0]
        return cols.T.contiguous().float().to(device)


def upsample_matrices(src: Sequence[int], dst: tuple[int, int], mode: str,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Matrices ``A_h (H, h)`` and ``A_w (W, w)`` with ``A_h @ z @ A_w.T`` equal to
    ``F.interpolate(z, size=(H, W), mode=mode, align_corners=False)`` for ``z (B, h, w)``
    (bicubic and bilinear interpolation are separable)."""
    return (_interp_matrix(int(src[0]), dst[0], mode, device), _interp_matrix(int(src[1]), dst[1], mode, device))


class GridAnalysis(nn.Module):
    """Field -> a guess of its latent grids (the encoder's starting point). Per level,
    coarsest first: three 3x3 convolutions (``analysis_channels`` wide, GELU) of the
    normalised field average-pooled to the level's shape, the standardised climatology pooled
    the same way (climatology models), ``log10(rate_weight)`` and the coarser level's guess
    (bilinearly upsampled)."""

    def __init__(self, config: GridConfig) -> None:
        super().__init__()
        c = config.analysis_channels
        n_in = 3 + (1 if config.climatology else 0)
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Conv2d(n_in, c, 3, padding=1), nn.GELU(), nn.Conv2d(c, c, 3, padding=1), nn.GELU(),
                          nn.Conv2d(c, 1, 3, padding=1))
            for _ in config.factors
        )
        self.config = config

    def forward(self, x: torch.Tensor, clim: torch.Tensor | None, rate_weight: torch.Tensor) -> list[torch.Tensor]:
        """``x (B, H, W)`` normalised (0 at missing points), ``clim (1, 1, H, W)`` or None,
        ``rate_weight (B,)`` (> 0) -> float guesses ``(B, h_l, w_l)``, finest level first."""
        shapes = self.config.level_shapes((x.shape[1], x.shape[2]))
        log_lam = torch.log10(rate_weight.clamp_min(1e-6))[:, None, None, None]
        guesses: list[torch.Tensor] = []
        prev: torch.Tensor | None = None
        for lv in reversed(range(len(shapes))):
            s = shapes[lv]
            pooled = F.adaptive_avg_pool2d(x[:, None], s)
            feats = [pooled, log_lam.expand(-1, 1, *s)]
            if clim is not None:
                feats.append(F.adaptive_avg_pool2d(clim, s).expand(x.shape[0], -1, -1, -1))
            feats.append(torch.zeros_like(pooled) if prev is None else
                         F.interpolate(prev[:, None], size=s, mode="bilinear", align_corners=False))
            prev = self.levels[lv](torch.cat(feats, 1))[:, 0]
            guesses.append(prev)
        return guesses[::-1]


class GridSynthesis(nn.Module):
    """Latent grids -> field. Parameters: per-level input gains, the MLP, the optional 3x3
    refinement and the rate proxy's Laplace scales ``log_scale (L, *CONTEXT_SHAPE)`` (and,
    for the causal scheme, locations ``loc`` of the same shape)."""

    def __init__(self, config: GridConfig) -> None:
        super().__init__()
        self.config = config
        n_in = config.levels + (1 if config.climatology else 0)
        h = config.hidden
        self.gain = nn.Parameter(torch.full((config.levels,), 0.1))
        c = config.refine_channels
        self.mlp = nn.Sequential(
            nn.Conv2d(n_in, h, 1), nn.GELU(), nn.Conv2d(h, h, 1), nn.GELU(), nn.Conv2d(h, max(c, 1), 1)
        )
        self.refine: nn.Module | None
        if c:
            self.refine = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.GELU(), nn.Conv2d(c, 1, 3, padding=1))
            self.head: nn.Module | None = nn.Conv2d(c, 1, 1)
        else:
            self.refine = nn.Conv2d(1, 1, 3, padding=1) if config.conv else None
            self.head = None
        ctx = CONTEXT_SHAPE[config.contexts]
        self.log_scale = nn.Parameter(torch.zeros(config.levels, *ctx))
        self.loc = nn.Parameter(torch.zeros(config.levels, *ctx)) if config.contexts == "causal" else None
        #: The encoder's initial guess (``config.analysis_channels > 0``); not used to decode.
        self.analysis = GridAnalysis(config) if config.analysis_channels else None
        self.basis: torch.Tensor | None
        if config.basis:
            if config.field_shape is None:
                raise ValueError("a basis needs the model's field_shape")
            self.register_buffer("basis", torch.zeros(config.basis, *config.field_shape))
        else:
            self.basis = None

    def forward(self, latents: Sequence[torch.Tensor], clim: torch.Tensor | None,
                shape: tuple[int, int], coeffs: torch.Tensor | None = None,
                bases: torch.Tensor | None = None) -> torch.Tensor:
        """``latents[l] (B, h_l, w_l)``, ``clim (1, 1, H, W)`` or None, with a basis its
        coefficients ``coeffs (B, k)`` -> ``(B, H, W)``. ``bases (B, k, H, W)``: one basis
        per item instead of the model's (cross-fitting, ``grid_model._encode_cross_fitted``).

        Each level is upsampled (:func:`upsample_matrices`: two matrix products, the same
        linear map as ``F.interpolate`` with ``align_corners=False``; ``F.interpolate``
        itself for levels wider than :data:`DENSE_UPSAMPLE_MACS` allows) and the per-point MLP
        (stored as 1x1 convolutions) runs as matrix products on channels-last features —
        the same function as the convolutions, about twice as fast forward and backward on CPU."""
        ups = []
        for z in latents:
            h, w = z.shape[-2:]
            if h * w / shape[1] + w <= DENSE_UPSAMPLE_MACS:
                ah, aw = upsample_matrices((h, w), shape, self.config.upsample, z.device)
                ups.append(ah @ z @ aw.T)
            else:  # a wide fine level: dense matrices would cost more than they save
                ups.append(F.interpolate(z[:, None], size=shape, mode=self.config.upsample, align_corners=False)[:, 0])
        feats = torch.stack(ups, -1) * self.gain  # (B, H, W, L)
        if self.config.climatology:
            if clim is None:
                raise ValueError("this model needs its climatology field")
            feats = torch.cat([feats, clim[0, 0, :, :, None].expand(feats.shape[0], -1, -1, 1)], -1)
        x = feats
        for layer in self.mlp:
            if isinstance(layer, nn.Conv2d):
                x = F.linear(x, layer.weight.flatten(1), layer.bias)
            else:
                x = layer(x)
        out = x.permute(0, 3, 1, 2)  # (B, C, H, W)
        if self.head is not None and self.refine is not None:
            out = self.head(out) + self.refine(out)
        elif self.refine is not None:
            out = out + self.refine(out)
        if self.basis is None:
            return out[:, 0]
        k = self.basis.shape[0]
        if coeffs is None or coeffs.shape != (out.shape[0], k):
            raise ValueError(f"this synthesis adds {k} basis fields: needs coefficients "
                             f"({out.shape[0]}, {k}), got {None if coeffs is None else tuple(coeffs.shape)}")
        if bases is None:
            return out[:, 0] + torch.einsum("bk,khw->bhw", coeffs, self.basis)
        if bases.shape != (out.shape[0], *self.basis.shape):
            raise ValueError(f"per-item bases must be {(out.shape[0], *self.basis.shape)}, got {tuple(bases.shape)}")
        return out[:, 0] + torch.einsum("bk,bkhw->bhw", coeffs, bases)

    def rate_bits(self, noisy: Sequence[torch.Tensor], rounded: Sequence[torch.Tensor]) -> torch.Tensor:
        """Differentiable bits ``(B,)`` of noisy latents under a Laplace whose scale (and,
        causal scheme, location) depends on the (integer) contexts of the rounded latents."""
        total = torch.zeros(noisy[0].shape[0], device=noisy[0].device)
        for level, z in enumerate(noisy):
            ctx = torch_contexts(rounded, level, self.config.contexts)
            b = torch.exp(table_lookup(self.log_scale[level], ctx))
            if self.loc is not None:
                z = z - table_lookup(self.loc[level], ctx)

            def cdf(v: torch.Tensor, b: torch.Tensor = b) -> torch.Tensor:
                return 0.5 + 0.5 * torch.sign(v) * (1 - torch.exp(-v.abs() / b))

            p = (cdf(z + 0.5) - cdf(z - 0.5)).clamp_min(1e-9)
            total = total - torch.log2(p).flatten(1).sum(1)
        return total


# ------------------------------------------------------------------------------ entropy coding
@dataclass(frozen=True)
class CausalPlan:
    """What the ``causal`` coder writes for some items, independent of the frequency tables:
    per item its level-presence bits, and per non-empty level (coarsest first) the symbols
    ``+ K`` in coding order (int32) with their context indices (a tuple of index arrays into a
    level's ``(*CONTEXT_SHAPE["causal"], 2K+1)`` tables)."""

    present: list[list[bool]]
    levels: list[tuple[int, np.ndarray, tuple[np.ndarray, ...]]]


def causal_plan(items: Sequence[Sequence[np.ndarray]], k: int) -> CausalPlan:
    """The :class:`CausalPlan` of ``items`` (each ``L`` int grids, symbols in ``[-k, k]``):
    all items' level ``l`` interleaved along the diagonals ``col + 2·row``."""
    n_levels = len(items[0]) if items else 0
    present = [[bool(z.any()) for z in grids] for grids in items]
    levels = []
    for lv in reversed(range(n_levels)):
        idx = [i for i, p in enumerate(present) if p[lv]]
        if not idx:
            continue
        z = np.stack([items[i][lv] for i in idx])
        ctx = [np.stack(c) for c in zip(*(level_contexts(items[i], lv, "causal") for i in idx), strict=True)]
        order = diagonal_order(z.shape)
        levels.append((lv, (z.ravel()[order] + k).astype(np.int32), tuple(c.ravel()[order] for c in ctx)))
    return CausalPlan(present, levels)


@dataclass(frozen=True)
class GridEntropyModel:
    """Integer frequency tables ``counts (L, *CONTEXT_SHAPE[scheme], 2K+1)`` (all >= 1),
    fitted on the quantized latents of the training items; probabilities are ``counts / sum``
    in float64 (exact), so every machine builds the same coding tables. The scheme follows
    from the tables' shape."""

    counts: np.ndarray

    @property
    def scheme(self) -> str:
        for name, shape in CONTEXT_SHAPE.items():
            if self.counts.shape[1:-1] == shape:
                return name
        raise BitstreamError(f"entropy tables of shape {self.counts.shape} match no context scheme")

    @property
    def max_symbol(self) -> int:
        return (int(self.counts.shape[-1]) - 1) // 2

    @property
    def levels(self) -> int:
        return int(self.counts.shape[0])

    @classmethod
    def fit(cls, items: Sequence[Sequence[np.ndarray]], max_symbol: int, scheme: str = "row") -> GridEntropyModel:
        """``items``: per training item, its ``L`` integer grids (finest first).

        ``row``: counts + 1. ``causal`` (many contexts, some rarely seen): each context's
        distribution backs off to its ``(cc, ss)`` context's, which backs off to the level's:
        ``p = (n_sym + BACKOFF * p_parent) / (n + BACKOFF)``, stored as integer frequencies
        ``max(1, round(p * 2**24))``."""
        if not items:
            raise NotFittedError("need quantized training latents to fit the entropy model")
        levels = len(items[0])
        counts = np.zeros((levels, *CONTEXT_SHAPE[scheme], 2 * max_symbol + 1), np.int64)
        for grids in items:
            clipped = [np.clip(g, -max_symbol, max_symbol) for g in grids]
            for lv in range(levels):
                ctx = level_contexts(clipped, lv, scheme)
                np.add.at(counts[lv], (*(c.ravel() for c in ctx), (clipped[lv] + max_symbol).ravel()), 1)
        if scheme == "row":
            return cls(counts + 1)
        n = counts.astype(np.float64)
        lvl = n.sum(axis=(1, 2, 3, 4), keepdims=True)
        p_lvl = (lvl + 0.5) / (lvl + 0.5).sum(-1, keepdims=True)
        base = n.sum(axis=(3, 4), keepdims=True)
        p_base = (base + BACKOFF * p_lvl) / (base.sum(-1, keepdims=True) + BACKOFF)
        p = (n + BACKOFF * p_base) / (n.sum(-1, keepdims=True) + BACKOFF)
        return cls(np.maximum(1, np.round(p * 2.0**24)).astype(np.int64))

    @functools.cached_property
    def _probs(self) -> np.ndarray:
        """``counts`` normalised per context (float64), built once per table."""
        c = self.counts.astype(np.float64)
        return c / c.sum(axis=-1, keepdims=True)

    def compress(self, items: Sequence[Sequence[np.ndarray]]) -> bytes:
        """Per item, ``L`` int grids in ``[-K, K]`` -> bytes. ``row``: one level-presence
        byte per item, then the range coder's 32-bit little-endian words, item by item.
        ``causal``: only the words: every item's level-presence bits (coarsest first, adaptive
        per-level probabilities, :class:`_Presence`), then level by level (coarsest first)
        the present items' symbols, diagonal by diagonal, items interleaved within each
        diagonal (so one decoder call serves a diagonal of all items)."""
        self.check(items)
        enc = constriction.stream.queue.RangeEncoder()
        if self.scheme == "row":
            k, probs, scheme = self.max_symbol, self._probs, self.scheme
            model = constriction.stream.model.Categorical(perfect=False)
            bits = [[bool(z.any()) for z in grids] for grids in items]
            flags = bytearray()
            for grids, present in zip(items, bits, strict=True):
                flags.append(sum(1 << lv for lv in range(self.levels) if present[lv]))
                for lv in reversed(range(self.levels)):
                    if present[lv]:
                        cc, ss = level_contexts(grids, lv, scheme)
                        enc.encode((grids[lv].ravel() + k).astype(np.int32), model, probs[lv][cc.ravel(), ss.ravel()])
            return bytes(flags) + enc.get_compressed().astype("<u4").tobytes()
        self.encode_to(enc, items)
        return enc.get_compressed().astype("<u4").tobytes()

    def check(self, items: Sequence[Sequence[np.ndarray]]) -> None:
        """Raise ``ValueError`` unless every item has this model's levels, symbols in ``[-K, K]``."""
        check_latents(items, self.levels, self.max_symbol)

    def encode_to(self, enc: Any, items: Sequence[Sequence[np.ndarray]], plan: CausalPlan | None = None) -> None:
        """Append ``items`` (checked with :meth:`check`) to a constriction range encoder,
        ``causal`` scheme: level-presence bits, then the levels' diagonals. ``plan``: the
        items' :func:`causal_plan` when already computed (it does not depend on the tables)."""
        plan = causal_plan(items, self.max_symbol) if plan is None else plan
        probs = self._probs
        model = constriction.stream.model.Categorical(perfect=False)
        encode_presence(enc, plan.present, self.levels)
        for lv, symbols, ctx in plan.levels:
            enc.encode(symbols, model, probs[lv][ctx])

    def decompress(self, payload: bytes, n_items: int, shapes: Sequence[tuple[int, int]]) -> list[list[np.ndarray]]:
        """Inverse of :meth:`compress` for ``n_items`` items of level ``shapes``."""
        if len(shapes) != self.levels:
            raise BitstreamError(f"expected {self.levels} level shapes, got {len(shapes)}")
        scheme = self.scheme
        n_flags = n_items if scheme == "row" else 0
        if len(payload) < n_flags or (len(payload) - n_flags) % 4:
            raise BitstreamError("latent-grid section has an invalid length")
        flags = payload[:n_flags]
        if any(f >> self.levels for f in flags):
            raise BitstreamError("latent-grid section names levels the model does not have")
        words = np.frombuffer(payload[n_flags:], "<u4").astype(np.uint32)
        try:
            dec = constriction.stream.queue.RangeDecoder(words)
            if scheme == "row":
                k, probs = self.max_symbol, self._probs
                model = constriction.stream.model.Categorical(perfect=False)
                out = [[np.zeros(s, np.int64) for s in shapes] for _ in range(n_items)]
                for grids, present in zip(out, flags, strict=True):
                    for lv in reversed(range(self.levels)):
                        if present >> lv & 1:
                            _decode_rows(dec, model, probs[lv], grids, lv, k)
                return out
            return self.decode_from(dec, n_items, shapes)
        except BitstreamError:
            raise
        except Exception as exc:  # constriction raises on exhausted or inconsistent data
            raise BitstreamError(f"latent-grid payload cannot be decoded: {exc}") from exc

    def decode_from(self, dec: Any, n_items: int, shapes: Sequence[tuple[int, int]]) -> list[list[np.ndarray]]:
        """Read ``n_items`` items of level ``shapes`` (``causal`` scheme, :meth:`encode_to`)
        from a constriction range decoder."""
        k, probs = self.max_symbol, self._probs
        model = constriction.stream.model.Categorical(perfect=False)
        out = [[np.zeros(s, np.int64) for s in shapes] for _ in range(n_items)]
        bits = decode_presence(dec, n_items, self.levels)
        for lv in reversed(range(self.levels)):
            idx = [i for i, present in enumerate(bits) if present[lv]]
            if not idx:
                continue
            cc = np.stack([coarse_context(out[i][lv + 1] if lv + 1 < self.levels else None, shapes[lv])
                           for i in idx])
            for i, z in zip(idx, _decode_diagonals(dec, model, probs[lv], cc, k), strict=True):
                out[i][lv] = z
        return out


def compress_with_sets(sets: Sequence[GridEntropyModel | LatentARM], items: Sequence[Sequence[np.ndarray]]) -> bytes:
    """Code ``items`` with whichever of the coders ``sets`` (``causal`` table sets, and an ARM,
    :class:`~coinpp_pipeline.latent_arm.LatentARM`) gives the fewest bytes (the first on
    ties): range-coder words (``<u4``) whose first symbol is the coder's index, uniform over
    ``len(sets)``, then that coder's ``encode_to``. ``sets[0]``: tables."""
    index = constriction.stream.model.Categorical(perfect=False)
    uniform = np.full((1, len(sets)), 1.0 / len(sets))
    check_latents(items, sets[0].levels, sets[0].max_symbol)
    plan = causal_plan(items, sets[0].max_symbol)  # the same symbols and contexts for every set
    coded = []
    for i, t in enumerate(sets):
        enc = constriction.stream.queue.RangeEncoder()
        enc.encode(np.array([i], np.int32), index, uniform)
        t.encode_to(enc, items, plan)
        coded.append(enc.get_compressed().astype("<u4").tobytes())
    return min(coded, key=len)


def decompress_with_sets(sets: Sequence[GridEntropyModel | LatentARM], payload: bytes, n_items: int,
                         shapes: Sequence[tuple[int, int]]) -> list[list[np.ndarray]]:
    """Inverse of :func:`compress_with_sets`."""
    if len(shapes) != sets[0].levels:
        raise BitstreamError(f"expected {sets[0].levels} level shapes, got {len(shapes)}")
    if not payload or len(payload) % 4:
        raise BitstreamError("latent-grid section has an invalid length")
    index = constriction.stream.model.Categorical(perfect=False)
    try:
        dec = constriction.stream.queue.RangeDecoder(np.frombuffer(payload, "<u4").astype(np.uint32))
        i = int(dec.decode(index, np.full((1, len(sets)), 1.0 / len(sets)))[0])
        return sets[i].decode_from(dec, n_items, shapes)
    except BitstreamError:
        raise
    except Exception as exc:  # constriction raises on exhausted or inconsistent data
        raise BitstreamError(f"latent-grid payload cannot be decoded: {exc}") from exc


def _decode_rows(dec: Any, model: Any, probs: np.ndarray, grids: list[np.ndarray], lv: int, k: int) -> None:
    """Decode level ``lv`` of one item of the row scheme into ``grids[lv]``, row by row."""
    z = grids[lv]
    h, w = z.shape
    cc = coarse_context(grids[lv + 1] if lv + 1 < len(grids) else None, (h, w))
    prev = None
    for i in range(h):
        sym = dec.decode(model, probs[cc[i], row_context(prev, w)])
        z[i] = np.asarray(sym, np.int64) - k
        prev = z[i]


def check_latents(items: Sequence[Sequence[np.ndarray]], levels: int, max_symbol: int) -> None:
    """Raise ``ValueError`` unless every item has ``levels`` grids of symbols in ``[-K, K]``."""
    for grids in items:
        if len(grids) != levels:
            raise ValueError(f"expected {levels} latent levels, got {len(grids)}")
        if max(np.abs(z).max(initial=0) for z in grids) > max_symbol:
            raise ValueError(f"latent symbols outside [-{max_symbol}, {max_symbol}]")


def encode_presence(enc: Any, present: Sequence[Sequence[bool]], levels: int) -> None:
    """Append every item's level-presence bits (coarsest level first, :class:`_Presence`
    probabilities) to a constriction range encoder."""
    model = constriction.stream.model.Categorical(perfect=False)
    presence = _Presence(levels)
    for bits in present:
        for lv in reversed(range(levels)):
            enc.encode(np.array([bits[lv]], np.int32), model, presence.probs(lv))
            presence.update(lv, bits[lv])


def decode_presence(dec: Any, n_items: int, levels: int) -> list[list[bool]]:
    """Inverse of :func:`encode_presence`: per item, which of its ``levels`` are coded."""
    model = constriction.stream.model.Categorical(perfect=False)
    presence = _Presence(levels)
    out = []
    for _ in range(n_items):
        bits = [False] * levels
        for lv in reversed(range(levels)):
            bits[lv] = bool(dec.decode(model, presence.probs(lv))[0])
            presence.update(lv, bits[lv])
        out.append(bits)
    return out


class _Presence:
    """Adaptive probabilities of the causal scheme's level-presence bits: per level, the
    Krichevsky-Trofimov estimate ``(ones + 1/2) / (items + 1)`` over the chunk's earlier
    items (exact float64 from integer counts, so coder and decoder agree)."""

    def __init__(self, levels: int) -> None:
        self.ones = [0] * levels
        self.seen = [0] * levels

    def probs(self, level: int) -> np.ndarray:
        p1 = (self.ones[level] + 0.5) / (self.seen[level] + 1.0)
        return np.array([[1.0 - p1, p1]])

    def update(self, level: int, bit: bool) -> None:
        self.ones[level] += int(bit)
        self.seen[level] += 1


def _decode_diagonals(dec: Any, model: Any, probs: np.ndarray, cc: np.ndarray, k: int) -> np.ndarray:
    """Decode one level of the causal scheme for ``m`` items, a diagonal ``t = col + 2 * row``
    at a time (items interleaved, rows ascending within each), into ``(m, h, w)`` grids.
    ``probs (N_COARSE, N_ROW, N_LEFT, N_UP, 2K+1)``, ``cc (m, h, w)``."""
    m, h, w = cc.shape
    zp = np.zeros((m, h + 1, w + 2), np.int64)  # zp[:, r + 1, c + 1] = z[:, r, c]; zero border
    a = np.zeros_like(zp)  # |zp|
    for t in range(w + 2 * (h - 1)):
        r = np.arange(max(0, -((w - 1 - t) // 2)), min(h - 1, t // 2) + 1)
        i, r = np.repeat(np.arange(m), len(r)), np.tile(r, m)
        c = t - 2 * r
        ss = ROW_BINS[np.minimum(a[i, r, c] + a[i, r, c + 1] + a[i, r, c + 2], len(ROW_BINS) - 1)]
        lf = np.clip(zp[i, r + 1, c], -1, 1) + 1
        us = np.sign(zp[i, r, c + 1]) + 1
        sym = np.asarray(dec.decode(model, probs[cc[i, r, c], ss, lf, us]), np.int64) - k
        zp[i, r + 1, c + 1] = sym
        a[i, r + 1, c + 1] = np.abs(sym)
    return zp[:, 1:, 1:-1]
