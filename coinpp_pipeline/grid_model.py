"""Latent-grid COIN++ model: the shared synthesis network and entropy tables are learned
once over a dataset; each field is stored as integer latent grids found by a few hundred
gradient steps on ``MSE + rate_weight * bits`` (see :mod:`coinpp_pipeline.latent_grid`).

Same chunk format, codecs, masks, integer/float dtypes and error-bounded residual layer as
the patch model (:class:`coinpp_pipeline.Model`); the latents travel in section ``G``.
A chunk is ``(*items, H, W)``: every leading axis enumerates 2-D fields.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import math
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from . import bitstream, checkpoints
from .basis_coding import CoefficientCoder, step_code
from .errors import BitstreamError
from .latent_arm import LatentARM, fit_arm
from .latent_grid import (
    GridConfig,
    GridEntropyModel,
    GridSynthesis,
    compress_with_sets,
    decompress_with_sets,
)
from .metalearning import pick_device
from .model import (
    Model,
    _encode_residual,
    _Parsed,
    _stable,
    check_input,
    check_rate_weight,
    chunk_bounds,
)
from .sperr_residual import check_residual_bpv, decode_sperr_residual, encode_sperr_residual

KIND = "grid"
#: The encoder's differentiable bits: ``(noisy latents, rounded latents) -> (B,)``.
RateTerm = Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor]], torch.Tensor]
#: Points (fields x H x W) fitted together in one encoder batch: small fields are batched
#: (fewer, larger tensor operations) while activations stay bounded.
ENCODE_POINTS = 1 << 16
#: ... on a CUDA device, where small batches leave the GPU idle between kernel launches
#: (2**23 points: 128 whole 181x360 fields; on an H200 an encoder step of the t2m model took
#: 18 / 14 / 21 / 42 ms for 7 / 28 / 112 / 448 fields, session 19).
ENCODE_POINTS_CUDA = 1 << 23
#: With an error bound, no rate weight given and a residual left to code at the model's
#: default lambda, the encoder also tries that lambda divided by this, then by its square,
#: ..., while the chunk keeps shrinking and still has a residual, at most
#: :data:`BOUNDED_RATE_TRIES` encodes in all, and keeps the shortest chunk: a closer
#: prediction leaves a sparser residual, which often saves more than the latents cost
#: (session 14, one held-out chunk each at 3 % / 1 % of range, lambda 3 -> 1: t2m 129.0x ->
#: 148.9x / 33.4x -> 34.1x, MRI 17.6x -> 17.8x / 10.4x -> 10.7x; HadCM3 3 % by lambda 3 / 1 /
#: 0.3 / 0.1: 259.9x / 351.2x / 440.9x / 393.1x, 1 %: 41.1x / 41.8x / 42.7x / 44.9x;
#: `benchmarks/prototypes/residual_proto.py --rate-weights`).
BOUNDED_RATE_DIVISOR = 3.0
BOUNDED_RATE_TRIES = 4
#: Format byte of section ``P`` (basis coefficients): 0 = little-endian float16, fields x k.
COEFFS_FLOAT16 = 0
#: ... 1 = quantized and range-coded (:mod:`~coinpp_pipeline.basis_coding`).
COEFFS_CODED = 1


def encode_batches(n: int, hw: tuple[int, int], points: int = ENCODE_POINTS) -> list[slice]:
    """Split ``n`` fields of shape ``hw`` into near-equal batches of at most ``points``
    points each (always at least one field per batch)."""
    if n == 0:
        return []
    parts = max(1, min(n, math.ceil(n * hw[0] * hw[1] / points)))
    size = math.ceil(n / parts)
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


#: Temperature of the stochastic Gumbel annealing: from the first to the second value,
#: geometrically over the annealing steps.
SGA_TAU = (0.5, 0.01)


def sga_temperature(step: int, n_steps: int) -> float:
    """Annealing temperature at ``step`` of ``n_steps``: :data:`SGA_TAU` from its first to its
    second value, geometrically."""
    frac = step / max(n_steps - 1, 1)
    return SGA_TAU[0] * (SGA_TAU[1] / SGA_TAU[0]) ** frac


def soft_round_sga(z: torch.Tensor, tau: float, gen: torch.Generator) -> torch.Tensor:
    """Stochastic Gumbel annealing (Yang, Bamler & Mandt, NeurIPS 2020) of ``z`` (any shape):
    a differentiable random mix of ``floor(z)`` and ``floor(z) + 1``, weighted by a
    Gumbel-softmax at temperature ``tau`` over logits ``-atanh(distance) / tau``; as
    ``tau -> 0`` it becomes a hard choice, mostly of the nearer integer."""
    fl = torch.floor(z).detach()
    r = (z - fl).clamp(1e-4, 1 - 1e-4)
    logits = torch.stack([-torch.atanh(r), -torch.atanh(1 - r)], -1) / tau
    u = torch.rand(logits.shape, generator=gen, device=gen.device).to(z.device).clamp(1e-9, 1 - 1e-9)
    w = torch.softmax(logits - torch.log(-torch.log(u)), -1)
    return fl + w[..., 1]


@dataclasses.dataclass(frozen=True)
class GridTrainConfig:
    """Training of a latent-grid model (auto-decoder: the shared network and one set of
    latent grids per training item and rate weight are optimised jointly)."""

    steps: int = 2000
    batch: int = 6
    rate_weights: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0, 30.0)
    lr: float = 3e-3
    latent_lr: float = 3e-2
    ste_fraction: float = 0.2
    sga_fraction: float = 0.0
    seed: int = 0
    device: str | None = None
    log_every: int = 100

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class GridModel(Model):
    """A latent-grid COIN++ model (``kind = "grid"`` in the model file)."""

    config: GridConfig  # type: ignore[assignment]

    def __init__(  # noqa: PLR0913
        self,
        config: GridConfig,
        synthesis: GridSynthesis,
        mean: np.ndarray,
        std: float,
        entropy: GridEntropyModel,
        report: dict[str, Any] | None = None,
        table_sets: Sequence[GridEntropyModel] = (),
        arm: LatentARM | None = None,
        coeff_coder: CoefficientCoder | None = None,
    ) -> None:
        for t in table_sets:
            if t.counts.shape != entropy.counts.shape:
                raise ValueError(f"extra entropy tables {t.counts.shape} differ in shape from the "
                                 f"pooled ones {entropy.counts.shape}")
        if table_sets and entropy.scheme != "causal":
            raise ValueError("extra entropy table sets need the causal context scheme")
        if config.encode_rate == "arm" and arm is None:
            raise ValueError("encode_rate='arm' needs a model with an ARM")
        if arm is not None and entropy.scheme != "causal":
            raise ValueError("an ARM needs the causal context scheme")
        if coeff_coder is not None and coeff_coder.components != config.basis:
            raise ValueError(f"the coefficient coder codes {coeff_coder.components} components; the model's "
                             f"basis has {config.basis}")
        if arm is not None and (arm.levels != config.levels or arm.max_symbol != config.max_symbol):
            raise ValueError(f"the ARM codes {arm.levels} levels of symbols up to {arm.max_symbol}; the model "
                             f"has {config.levels} levels up to {config.max_symbol}")
        self.config = config
        self.network = synthesis.eval()  # type: ignore[assignment]
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32).reshape(1)
        self.tables = entropy
        #: Extra entropy table sets (e.g. one per rate weight). With any, a chunk's ``G``
        #: section's first range-coded symbol names the set it was coded with (0 = ``tables``).
        self.table_sets = tuple(table_sets)
        #: Learned autoregressive entropy model (:mod:`~coinpp_pipeline.latent_arm`): one more
        #: candidate coder of the ``G`` section, after the table sets.
        self.arm = arm
        #: Entropy coder of the basis coefficients (:mod:`~coinpp_pipeline.basis_coding`);
        #: without one (files written before it) they are stored as float16.
        self.coeff_coder = coeff_coder
        self.entropy = None
        self.quantizer = None
        self.report = report or {}
        self.device = torch.device("cpu")
        self._bytes: bytes | None = None
        self._sha256: tuple[bytes, str] | None = None
        self._clim: torch.Tensor | None = None

    # ------------------------------------------------------------------ files
    def to_bytes(self) -> bytes:
        if self._bytes is None:
            tensors: dict[str, Any] = {f"network.{k}": v for k, v in self.network.state_dict().items()}
            counts = self.tables.counts
            if self.tables.scheme == "causal":  # frequencies <= 2**24: int32 halves the file
                counts = counts.astype(np.int32)
            tensors |= {"norm.mean": self.mean, "norm.std": self.std, "entropy.counts": counts}
            if self.table_sets:
                tensors["entropy.counts_sets"] = np.stack([t.counts for t in self.table_sets]).astype(counts.dtype)
            if self.arm is not None:
                tensors |= {f"entropy.{k}": v for k, v in self.arm.to_tensors().items()}
            if self.coeff_coder is not None:
                tensors |= {f"entropy.{k}": v for k, v in self.coeff_coder.to_tensors().items()}
            desc = {"kind": KIND, "config": self.config.to_dict(), "report": _stable(self.report)}
            self._bytes = checkpoints.serialize(tensors, desc)
        return self._bytes

    @classmethod
    def _from_parts(cls, tensors: dict[str, torch.Tensor], desc: dict[str, Any], data: bytes) -> GridModel:
        config = GridConfig.from_dict(desc["config"])
        net = GridSynthesis(config)
        net.load_state_dict({k[len("network.") :]: v for k, v in tensors.items() if k.startswith("network.")})
        tables = GridEntropyModel(tensors["entropy.counts"].numpy())
        if tables.scheme != config.contexts or tables.levels != config.levels:
            raise BitstreamError(f"model file's entropy tables {tables.counts.shape} do not fit its "
                                 f"{config.contexts!r} contexts and {config.levels} levels")
        sets = tensors.get("entropy.counts_sets")
        table_sets = [GridEntropyModel(c) for c in sets.numpy()] if sets is not None else []
        arm_tensors = {k[len("entropy."):]: v.numpy() for k, v in tensors.items() if k.startswith("entropy.arm.")}
        try:
            arm = LatentARM.from_tensors(arm_tensors) if arm_tensors else None
            scale = tensors.get("entropy.coeffs.scale")
            coeff_coder = CoefficientCoder.from_tensors({"coeffs.scale": scale.numpy()}) if scale is not None else None
            model = cls(config, net, tensors["norm.mean"].numpy(), float(tensors["norm.std"].reshape(-1)[0]),
                        tables, desc.get("report"), table_sets, arm, coeff_coder)
        except (ValueError, KeyError) as exc:  # extra coders that do not fit the model
            raise BitstreamError(f"model file's entropy table sets, ARM or coefficient coder: {exc}") from exc
        model._bytes = bytes(data)
        return model

    def _replace(self, **parts: Any) -> GridModel:
        """A new model from this one's parts, some replaced (``config``, ``network``,
        ``report``, ``table_sets``, ``arm``, ``coeff_coder``); shares the rest, same device."""
        p: dict[str, Any] = {"config": self.config, "network": self.network, "report": self.report,
                             "table_sets": self.table_sets, "arm": self.arm, "coeff_coder": self.coeff_coder} | parts
        return GridModel(p["config"], p["network"], self.mean, float(self.std[0]), self.tables, p["report"],
                         p["table_sets"], p["arm"], p["coeff_coder"]).to(self.device)

    def with_encoding(self, *, encode_steps: int | None = None, encode_lr: float | None = None,
                      encode_noise_fraction: float | None = None, rate_weight: float | None = None,
                      encode_rate: str | None = None) -> GridModel:
        """A copy of this model with other encoding defaults (same synthesis weights, mean and
        entropy tables; the network is copied, so moving one model to a device leaves the
        other where it is). Encoding settings are part of the model file,
        so the copy has its own model id: chunks written by one are not read by the other."""
        c = self.config
        config = dataclasses.replace(
            c,
            encode_steps=c.encode_steps if encode_steps is None else int(encode_steps),
            encode_lr=c.encode_lr if encode_lr is None else float(encode_lr),
            encode_noise_fraction=c.encode_noise_fraction if encode_noise_fraction is None else float(encode_noise_fraction),
            rate_weight=c.rate_weight if rate_weight is None else float(rate_weight),
            encode_rate=c.encode_rate if encode_rate is None else encode_rate,  # type: ignore[arg-type]
        )
        return self._replace(config=config, network=copy.deepcopy(self.network))

    def with_previous_predictor(self, enabled: bool = True) -> GridModel:
        """A copy of this model that predicts each field of a chunk from the previous one
        (``GridConfig.predict_previous``; ``enabled=False``: one that does not). Same synthesis
        weights and coders; its own model id (the chunk layout differs)."""
        config = dataclasses.replace(self.config, predict_previous=bool(enabled))
        return self._replace(config=config, network=copy.deepcopy(self.network))

    def with_constant_rows(self, rows: Sequence[int]) -> GridModel:
        """A copy of this model that stores the value of each of ``rows`` (the poles of a
        latitude–longitude grid; :func:`detect_constant_rows` finds them in training data)
        instead of synthesising it, in chunks whose fields are constant there
        (``GridConfig.constant_rows``; ``()``: a copy that does not). The model's mean field
        must be constant along those rows. Same synthesis weights and coders; its own model id."""
        rows = tuple(int(r) for r in rows)
        config = dataclasses.replace(self.config, constant_rows=rows)
        for r in rows:
            if np.ptp(self.mean[r]) != 0:
                raise ValueError(f"row {r} of the model's mean field is not constant: not a constant row of "
                                 "the training data")
        return self._replace(config=config, network=copy.deepcopy(self.network))

    @property
    def chunk_items(self) -> int:
        """Items per chunk the model was made for: the run length its ARM learned the item
        context on (:func:`fit_coders`' ``arm_chunk_items``, recorded in the model file's
        report), else 1. Chunks of other lengths decode the same; they code less well."""
        if self.arm is None or not self.arm.item_context:
            return 1
        arm = self.report.get("arm")
        n = arm.get("chunk_items") if isinstance(arm, dict) else None
        return n if isinstance(n, int) and n >= 1 else 1

    def to(self, device: str | torch.device | None) -> GridModel:
        self.device = pick_device(str(device) if device is not None else None)
        self.network.to(self.device)
        self._clim = None
        return self

    # ------------------------------------------------------------------ latents
    def _shape(self, shape: tuple[int, ...]) -> tuple[int, int]:
        if len(shape) < 2:
            raise ValueError(f"a grid model encodes (*items, H, W) arrays; got shape {shape}")
        hw = (int(shape[-2]), int(shape[-1]))
        if self.config.climatology and hw != self.config.field_shape:
            raise ValueError(
                f"this model holds a climatology for fields of shape {self.config.field_shape}; "
                f"got fields of shape {hw}: chunk whole fields, or train with climatology=False"
            )
        return hw

    def _climatology(self) -> torch.Tensor | None:
        if not self.config.climatology:
            return None
        if self._clim is None:
            self._clim = climatology_input(self.mean, self.device)
        return self._clim

    def _normalise(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean.astype(np.float64)) / float(self.std[0])

    def fit_grids(self, normed: np.ndarray, valid: np.ndarray, steps: int, rate_weight: float) -> list[np.ndarray]:
        """The grids of :meth:`fit_grids_coeffs` (without the basis coefficients)."""
        return self.fit_grids_coeffs(normed, valid, steps, rate_weight)[0]

    def basis_coefficients(self, x: torch.Tensor, bases: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised fields ``x (B, H, W)`` (0 at missing points) -> their projection on the
        model's basis ``(B, k)`` (the basis is orthogonal with unit RMS per point), or on
        per-item ``bases (B, k, H, W)``; ``(B, 0)`` without one."""
        basis: torch.Tensor | None = self.network.basis  # type: ignore[assignment]
        if basis is None:
            return torch.zeros((x.shape[0], 0), device=x.device)
        return project_on_basis(x, basis if bases is None else bases)

    def fit_grids_coeffs(self, normed: np.ndarray, valid: np.ndarray, steps: int, rate_weight: float,
                         prev: Sequence[np.ndarray] | None = None,
                         predictor: torch.Tensor | None = None,
                         bases: torch.Tensor | None = None) -> tuple[list[np.ndarray], np.ndarray]:
        """Encode normalised fields ``(B, H, W)`` (invalid points ignored) -> ``L`` int64
        grids ``(B, h_l, w_l)`` in ``[-K, K]`` and the basis coefficients ``(B, k)`` (float32,
        before their quantization for the chunk, :meth:`_coefficient_section`; ``k = 0``
        without a basis).

        Adam on ``MSE + rate_weight * bits``: the first ``config.encode_noise_fraction`` of
        the steps (at least one) with additive uniform noise standing in for rounding, the
        rest with stochastic Gumbel annealing (:func:`soft_round_sga`), so the latents
        settle on integers the decoder will see; finally rounded. The steps start from
        :meth:`initial_latents` (zeros, or below the default step count the analysis
        network's guess — with ``steps=0`` that guess, rounded, is the result).
        With a basis, its coefficients start at the fields' projection and are fitted with
        the latents. With ``encode_rate="arm"`` the rate term is the model's ARM; if it has the
        item context, ``prev`` (``L`` int grids ``(B, h_l, w_l)``) are the fields' previous
        items in the chunk (None: they begin it). ``predictor (B, H, W)``
        (:meth:`previous_predictor`, models with ``predict_previous``): one more field per item
        whose coefficient is fitted with the basis coefficients (returned as their last
        column, ``(B, k + 1)``; it starts at the field's projection on it). ``bases (B, k, H,
        W)``: one basis per field instead of the model's (cross-fitting). Deterministic
        (seeded) for a given machine and input."""
        shape = (normed.shape[1], normed.shape[2])
        k = self.config.max_symbol
        x = torch.from_numpy(np.where(valid, normed, 0.0).astype(np.float32)).to(self.device)
        m = torch.from_numpy(valid.astype(np.float32)).to(self.device)
        gen = torch.Generator(device=self.device).manual_seed(0)
        clim = self._climatology()
        coeffs = self.basis_coefficients(x, bases)
        if predictor is not None:
            coeffs = torch.cat([coeffs, (x * predictor).flatten(1).mean(1, keepdim=True)], 1)
        coeffs.requires_grad_(True)
        k_basis = self.config.basis
        rate_bits = self._rate_term(prev)
        zs = [t.requires_grad_(True) for t in self.initial_latents(x, rate_weight, steps)]
        if steps > 0:
            opt = torch.optim.Adam([*zs, coeffs], lr=self.config.encode_lr)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
            n_noise = max(1, int(self.config.encode_noise_fraction * steps))
            with torch.enable_grad():
                for step in range(steps):
                    rounded = [torch.round(z).detach() for z in zs]
                    if step < n_noise:
                        zq = [z + torch.rand(z.shape, generator=gen, device=self.device) - 0.5 for z in zs]
                    else:
                        tau = sga_temperature(step - n_noise, steps - n_noise)
                        zq = [soft_round_sga(z, tau, gen) for z in zs]
                    rec = self.network(zq, clim, shape, coeffs[:, :k_basis], bases)
                    if predictor is not None:
                        rec = rec + coeffs[:, k_basis, None, None] * predictor
                    mse = masked_mse(rec, x, m)
                    bits = rate_bits(zq, rounded)
                    loss = (mse + rate_weight * bits / (shape[0] * shape[1])).sum()
                    opt.zero_grad()
                    # gradients of the latents and coefficients alone: the network's own
                    # (weights, tables) would be computed and dropped
                    loss.backward(inputs=[*zs, coeffs])
                    opt.step()
                    sched.step()
        return [torch.round(z.detach()).clamp(-k, k).long().cpu().numpy() for z in zs], coeffs.detach().cpu().numpy()

    def _rate_term(self, prev: Sequence[np.ndarray] | None) -> RateTerm:
        """The encoder's differentiable bits ``(noisy, rounded) -> (B,)``: the tables' Laplace
        proxy, or with ``encode_rate="arm"`` the ARM (given ``prev``, the previous items)."""
        arm = self.arm
        if self.config.encode_rate != "arm" or arm is None:
            if prev is not None:
                raise ValueError("previous items' latents only apply to the rate of an ARM with item context")
            net: GridSynthesis = self.network  # type: ignore[assignment]
            return net.rate_bits
        prev_t = None if prev is None else [torch.from_numpy(np.asarray(p)).float().to(self.device) for p in prev]
        return functools.partial(arm.torch_bits, prev=prev_t)

    def initial_latents(self, x: torch.Tensor, rate_weight: float, steps: int) -> list[torch.Tensor]:
        """The encoder's starting latents for normalised fields ``x (B, H, W)`` (0 at missing
        points) before ``steps`` gradient steps: the analysis network's guess if the model has
        one and ``steps`` is below the model's ``encode_steps`` (the fast modes), else zeros.
        From zeros the steps keep the latents sparser; at the default step count that codes
        better (MRI: 359.2x 28.02 dB from zeros, 300.0x 28.00 dB from the guess, 200 steps,
        lambda 1), while a few steps from zeros barely leave zero."""
        shape = (x.shape[1], x.shape[2])
        net: GridSynthesis = self.network  # type: ignore[assignment]
        analysis = net.analysis
        if analysis is None or steps >= self.config.encode_steps:
            return [torch.zeros((x.shape[0], *s), device=self.device) for s in self.config.level_shapes(shape)]
        with torch.no_grad():  # leaves without history: the encoder's steps move them
            return analysis(x, self._climatology(), torch.full((x.shape[0],), float(rate_weight), device=self.device))

    def fit_fields(self, normed: np.ndarray, valid: np.ndarray, steps: int, rate_weight: float) -> list[np.ndarray]:
        """The grids of :meth:`fit_fields_coeffs`."""
        return self.fit_fields_coeffs(normed, valid, steps, rate_weight)[0]

    def fit_fields_coeffs(self, normed: np.ndarray, valid: np.ndarray, steps: int, rate_weight: float,
                          row_values: np.ndarray | None = None) -> tuple[list[np.ndarray], np.ndarray]:
        """:meth:`fit_grids_coeffs` for any number of fields ``(B, H, W)`` of one chunk, in
        batches of at most :data:`ENCODE_POINTS` points (:data:`ENCODE_POINTS_CUDA` on a GPU;
        :func:`encode_batches`) -> ``L`` grids ``(B, h_l, w_l)`` and basis coefficients
        ``(B, k)``. Each field's loss is its own: the batching changes only the random draws of the
        noise / annealing. With ``encode_rate="arm"`` and an ARM with the item context the
        fields are one chunk's items in order: encoded one after the other, each with its
        predecessor's final latents as the rate term's item context (what the coder will use).
        With ``predict_previous`` likewise one after the other, each field after the first
        given the :meth:`previous_predictor` of its predecessor's decoded output (as the
        decoder will compute it: rounded latents, coefficients as stored); the coefficients
        then have one more column, the predictor's (0 for the first field). ``row_values
        (B, R)``: the normalised values the decoder writes into the model's constant rows
        (the section ``O`` the chunk will hold; those rows should be invalid in ``valid``)."""
        return self.fit_chunks_coeffs([normed], [valid], steps, rate_weight, [row_values])[0]

    def fit_chunks_coeffs(self, normed: Sequence[np.ndarray], valid: Sequence[np.ndarray], steps: int,
                          rate_weight: float, row_values: Sequence[np.ndarray | None] | None = None,
                          ) -> list[tuple[list[np.ndarray], np.ndarray]]:
        """:meth:`fit_fields_coeffs` for several chunks at once: ``normed[c] (B_c, H, W)`` (one
        spatial shape), ``valid[c]`` likewise, ``row_values[c] (B_c, R)`` or None -> per chunk
        its ``L`` grids ``(B_c, h_l, w_l)`` and coefficients. The chunks' fields share the
        encoder's batches: all of them, or for a model that encodes a chunk's fields in order
        (item-context ARM rate, previous-field predictor) field ``t`` of every chunk that has
        one, then field ``t + 1``. Each field's loss is its own, so sharing changes only the
        random draws (and, with the predictor, float rounding in the encoder's copy of the
        decoded previous field); one chunk alone is encoded exactly as by itself."""
        rows: Sequence[np.ndarray | None] = [None] * len(normed) if row_values is None else row_values
        if not normed:
            return []
        hw = (normed[0].shape[1], normed[0].shape[2])
        if any((n.shape[1], n.shape[2]) != hw for n in normed):
            raise ValueError("chunks encoded together must share one spatial shape")
        points = ENCODE_POINTS_CUDA if self.device.type == "cuda" else ENCODE_POINTS
        item_ctx = self.config.encode_rate == "arm" and self.arm is not None and self.arm.item_context
        if not (item_ctx or self.config.predict_previous):
            x_all, v_all = np.concatenate(list(normed)), np.concatenate(list(valid))
            parts = [self.fit_grids_coeffs(x_all[b], v_all[b], steps, rate_weight)
                     for b in encode_batches(x_all.shape[0], hw, points)]
            grids = [np.concatenate([p[0][lv] for p in parts]) for lv in range(self.config.levels)]
            coeffs = np.concatenate([p[1] for p in parts])
            bounds = np.cumsum([0, *(n.shape[0] for n in normed)])
            return [([g[a:b] for g in grids], coeffs[a:b]) for a, b in itertools.pairwise(bounds)]
        done: list[list[tuple[list[np.ndarray], np.ndarray]]] = [[] for _ in normed]
        outs: list[torch.Tensor | None] = [None] * len(normed)  # each chunk's last decoded field
        for t in range(max(n.shape[0] for n in normed)):
            active = [c for c, n in enumerate(normed) if n.shape[0] > t]
            for b in encode_batches(len(active), hw, points):
                cs = active[b]
                prev = ([np.concatenate([done[c][-1][0][lv] for c in cs]) for lv in range(self.config.levels)]
                        if t and item_ctx else None)
                pred = None
                if t and self.config.predict_previous:
                    with torch.no_grad():
                        pred = self.previous_predictor(torch.cat([outs[c] for c in cs]))  # type: ignore[misc]
                g, co = self.fit_grids_coeffs(np.stack([normed[c][t] for c in cs]),
                                              np.stack([valid[c][t] for c in cs]), steps, rate_weight, prev, pred)
                if self.config.predict_previous:
                    if pred is None:
                        co = np.concatenate([co, np.zeros((len(cs), 1), np.float32)], axis=1)
                    k = self.config.basis
                    cb = self._stored_coefficients(co[:, :k], rate_weight, hw) if k else None
                    zs = [torch.from_numpy(z.astype(np.float32)).to(self.device) for z in g]
                    out = self._synthesize_item(zs, hw, cb, _half(co[:, k]), pred)
                    for j, c in enumerate(cs):
                        rv = rows[c]
                        outs[c] = self._set_rows(out[j : j + 1], None if rv is None else rv[t : t + 1])
                for j, c in enumerate(cs):
                    done[c].append(([z[j : j + 1] for z in g], co[j : j + 1]))
        return [([np.concatenate([p[0][lv] for p in d]) for lv in range(self.config.levels)],
                 np.concatenate([p[1] for p in d])) for d in done]

    def synthesize_grids(self, grids: Sequence[np.ndarray], shape: tuple[int, int],
                         coeffs: np.ndarray | None = None, predictor_coeffs: np.ndarray | None = None,
                         row_values: np.ndarray | None = None) -> np.ndarray:
        """``L`` int grids ``(B, h_l, w_l)`` (and with a basis, its coefficients ``(B, k)``;
        with ``predict_previous``, the predictor's coefficients ``(B,)``, the first ignored;
        with stored constant rows, their normalised values ``(B, R)``)
        -> fields ``(B, H, W)`` in original units (float64). With ``predict_previous`` the
        fields are synthesised one after the other (:meth:`_synthesize_item`)."""
        with torch.inference_mode():
            zs = [torch.from_numpy(g.astype(np.float32)).to(self.device) for g in grids]
            if self.config.predict_previous:
                if predictor_coeffs is None:
                    raise ValueError("this model predicts each field from the previous one: give predictor_coeffs")
                cs = None if coeffs is None else np.asarray(coeffs, np.float32)
                outs: list[torch.Tensor] = []
                for i in range(zs[0].shape[0]):
                    pred = self.previous_predictor(outs[-1]) if outs else None
                    outs.append(self._synthesize_item([z[i : i + 1] for z in zs], shape,
                                                      None if cs is None else cs[i : i + 1],
                                                      float(predictor_coeffs[i]), pred,
                                                      None if row_values is None else row_values[i : i + 1]))
                out = torch.cat(outs).float().cpu().numpy()
            else:
                c = None if coeffs is None else torch.from_numpy(np.asarray(coeffs, np.float32)).to(self.device)
                out = self._set_rows(self.network(zs, self._climatology(), shape, c), row_values).float().cpu().numpy()
        return out.astype(np.float64) * float(self.std[0]) + self.mean.astype(np.float64)

    def _synthesize_item(self, zs: Sequence[torch.Tensor], shape: tuple[int, int], coeffs: np.ndarray | None,
                         predictor_coeff: float | np.ndarray, predictor: torch.Tensor | None,
                         row_values: np.ndarray | None = None) -> torch.Tensor:
        """One field's decoded output ``(1, H, W)`` (normalised) from its latents ``L x (1, h_l,
        w_l)``, basis coefficients ``(1, k)`` as stored, and — after the chunk's first field —
        ``predictor_coeff`` times ``predictor`` (:meth:`previous_predictor` of the previous
        field's output); ``row_values (1, R)`` the stored constant rows. The encoder and the
        decoder both call this (and that), so they see the same fields. The encoder also
        calls it for one field of each of ``B`` chunks: everything ``(B, ...)``,
        ``predictor_coeff (B,)``."""
        with torch.no_grad():
            c = None if coeffs is None else torch.from_numpy(np.asarray(coeffs, np.float32)).to(self.device)
            out: torch.Tensor = self.network(list(zs), self._climatology(), shape, c)
            if predictor is not None:
                pc = torch.from_numpy(np.asarray(predictor_coeff, np.float32).reshape(-1, 1, 1)).to(self.device)
                out = out + pc * predictor
        return self._set_rows(out, row_values)

    def _set_rows(self, out: torch.Tensor, row_values: np.ndarray | None) -> torch.Tensor:
        """Normalised fields ``out (B, H, W)`` with the model's constant rows set to
        ``row_values (B, R)`` (unchanged for None)."""
        if row_values is None:
            return out
        out = out.clone()
        v = torch.from_numpy(np.asarray(row_values, np.float32)).to(out.device, out.dtype)
        out[:, list(self.config.constant_rows), :] = v[:, :, None]
        return out

    def constant_row_values(self, x: np.ndarray, finite: np.ndarray) -> np.ndarray | None:
        """Fields ``x (B, H, W)`` (original units) -> the normalised values ``(B, R)`` of the
        model's constant rows as section ``O`` stores them (float16), or None when the model has
        none or some field is not constant along one of them (then the network codes them).
        A row with no finite value stores 0 (the mask hides it)."""
        rows = list(self.config.constant_rows)
        if not rows:
            return None
        constant, value = _rows_constant(x[:, rows], finite[:, rows])
        if not constant.all():
            return None
        mean = np.asarray([float(self.mean[r, 0]) for r in rows])
        out = np.nan_to_num((value - mean) / float(self.std[0]), nan=0.0)  # no finite value: 0
        if not np.isfinite(out.astype(np.float16)).all():  # beyond float16: let the network code them
            return None
        return _half(out)

    def previous_predictor(self, prev: torch.Tensor) -> torch.Tensor:
        """Decoded normalised fields ``prev (B, H, W)`` -> the next fields' predictor fields
        ``(B, H, W)``: less their projection on the basis (if any), scaled to unit RMS (zero
        where nothing is left)."""
        p = prev
        basis: torch.Tensor | None = self.network.basis  # type: ignore[assignment]
        if basis is not None:
            p = p - torch.einsum("bk,khw->bhw", project_on_basis(p, basis), basis)
        rms = p.pow(2).flatten(1).mean(1).sqrt()[:, None, None]
        return torch.where(rms > 1e-6, p / rms.clamp_min(1e-6), torch.zeros_like(p))

    # ------------------------------------------------------------------ entropy coding
    def coders(self) -> tuple[GridEntropyModel | LatentARM, ...]:
        """The ``G`` section's candidate coders, in index order: the pooled tables, the table
        sets, the ARM."""
        return (self.tables, *self.table_sets, *([self.arm] if self.arm is not None else []))

    def compress_grids(self, items: Sequence[Sequence[np.ndarray]]) -> bytes:
        """Per item, its ``L`` int grids -> the ``G`` section payload: the pooled tables' bytes,
        or with extra table sets or an ARM, the shortest of all :meth:`coders`' codings with
        the coder's index as the first range-coded symbol
        (:func:`~coinpp_pipeline.latent_grid.compress_with_sets`)."""
        coders = self.coders()
        if len(coders) == 1:
            return self.tables.compress(items)
        return compress_with_sets(coders, items)

    def decompress_grids(self, payload: bytes, n_items: int, shapes: Sequence[tuple[int, int]]) -> list[list[np.ndarray]]:
        """Inverse of :meth:`compress_grids`."""
        coders = self.coders()
        if len(coders) == 1:
            return self.tables.decompress(payload, n_items, shapes)
        return decompress_with_sets(coders, payload, n_items, shapes)

    # ------------------------------------------------------------------ chunks
    def encode(self, array: np.ndarray, *, steps: int | None = None, max_abs_error: float | None = None,
               rate_weight: float | None = None, residual_bpv: float | None = None) -> bytes:
        """Compress ``array (*items, H, W)`` to chunk bytes. ``rate_weight`` (lambda) sets the
        rate: larger = smaller and less exact (default: the model's; with an error bound
        and a residual to code, also the model's / :data:`BOUNDED_RATE_DIVISOR`, / its
        square, ... while the chunk shrinks, keeping the shortest — up to
        :data:`BOUNDED_RATE_TRIES` times the encoding time); ``steps`` the encoder's gradient steps;
        ``residual_bpv`` adds the hybrid layer: SPERR codes the network's residual at that many
        bits per value (:mod:`~coinpp_pipeline.sperr_residual`, section ``S``; for qualities
        above what the network reaches); ``max_abs_error`` adds the error-bounded residual
        layer (after the hybrid layer when both are given)."""
        return self.encode_many([array], steps=steps, max_abs_error=max_abs_error, rate_weight=rate_weight,
                                residual_bpv=residual_bpv)[0]

    def encode_many(self, arrays: Sequence[np.ndarray], *, steps: int | None = None,
                    max_abs_error: float | None | Sequence[float | None] = None,
                    rate_weight: float | None = None, residual_bpv: float | None = None) -> list[bytes]:
        """:meth:`encode` for several chunks at once -> their chunk bytes, in order
        (``max_abs_error`` one bound for all, or one per chunk). The fields of chunks with the
        same spatial shape share the encoder's batches (:meth:`fit_chunks_coeffs`; for a
        time-chunked model, field ``t`` of every chunk at once) — what fills a GPU when each
        chunk holds few fields. The bytes differ from one-at-a-time :meth:`encode` only by
        the encoder's random draws; a decoder reads them the same way. The error-bounded rate
        descent (several encodes) runs chunk by chunk."""
        bounds = chunk_bounds(max_abs_error, len(arrays))
        checked = [check_input(a, b) for a, b in zip(arrays, bounds, strict=True)]
        bpv = check_residual_bpv(residual_bpv)
        lam = self.config.rate_weight if rate_weight is None else check_rate_weight(rate_weight)
        n_steps = self.config.encode_steps if steps is None else int(steps)
        shapes = [self._shape(a.shape) for a in checked]
        xs = [a.astype(np.float64).reshape(-1, *hw) for a, hw in zip(checked, shapes, strict=True)]
        finites = [np.isfinite(x) for x in xs]
        sections: list[dict[str, bytes]] = []
        coded: dict[tuple[int, int], list[int]] = {}  # spatial shape -> chunks the network codes
        for i, (x, finite) in enumerate(zip(xs, finites, strict=True)):
            sec: dict[str, bytes] = {}
            if not finite.all():
                sec["M"] = bitstream.pack_mask(~finite[..., None])
            vals = x[finite]
            if vals.size == 0 or vals.min() == vals.max():
                sec["K"] = struct.pack("<d", float(vals.flat[0]) if vals.size else 0.0)
            else:
                coded.setdefault(shapes[i], []).append(i)
            sections.append(sec)
        for idx in coded.values():
            found = self._latent_sections_many([xs[i] for i in idx], [finites[i] for i in idx], n_steps, lam,
                                               [bounds[i] for i in idx], [checked[i].dtype for i in idx], bpv)
            for i, sec in zip(idx, found, strict=True):
                sections[i] |= sec
                bound = bounds[i]
                if rate_weight is None and bound is not None:
                    sections[i] |= self._bounded_descent(xs[i], finites[i], n_steps, lam, bound, checked[i].dtype,
                                                         sections[i], bpv)
        return [bitstream.pack(bitstream.Chunk(a.dtype, a.shape, hw, self.model_id, sec))
                for a, hw, sec in zip(checked, shapes, sections, strict=True)]

    def _bounded_descent(self, x: np.ndarray, finite: np.ndarray, steps: int, lam: float, max_abs_error: float,
                         dtype: np.dtype, first: dict[str, bytes], residual_bpv: float | None) -> dict[str, bytes]:
        """The error-bounded encoder's rate weight: ``first`` (the sections at ``lam``), then
        ``lam / BOUNDED_RATE_DIVISOR ** k`` while each is shorter than the last and leaves a
        residual (at most :data:`BOUNDED_RATE_TRIES` encodes); returns the shortest."""
        best = first
        for k in range(1, BOUNDED_RATE_TRIES):
            if best["R"][0] == 0:  # the section starts with varint rmax: 0 = no residual left
                break
            alt = self._latent_sections(x, finite, steps, lam / BOUNDED_RATE_DIVISOR**k, max_abs_error, dtype,
                                        residual_bpv)
            if sum(map(len, alt.values())) >= sum(map(len, best.values())):
                break
            best = alt
        return best

    def _latent_sections(self, x: np.ndarray, finite: np.ndarray, steps: int, rate_weight: float,
                         max_abs_error: float | None, dtype: np.dtype,
                         residual_bpv: float | None = None) -> dict[str, bytes]:
        """Fields ``x (B, H, W)`` -> the ``G`` section (``P``, ``Q`` with a basis, a predictor)
        and the residual layers asked for: ``S`` (SPERR at ``residual_bpv``), then ``R`` (bound)."""
        return self._latent_sections_many([x], [finite], steps, rate_weight, [max_abs_error], [dtype],
                                          residual_bpv)[0]

    def _latent_sections_many(self, xs: Sequence[np.ndarray], finites: Sequence[np.ndarray], steps: int,
                              rate_weight: float, max_abs_errors: Sequence[float | None],
                              dtypes: Sequence[np.dtype], residual_bpv: float | None = None,
                              ) -> list[dict[str, bytes]]:
        """:meth:`_latent_sections` of several chunks ``xs[c] (B_c, H, W)`` (one spatial shape),
        their latents fitted together (:meth:`fit_chunks_coeffs`)."""
        hw = (xs[0].shape[1], xs[0].shape[2])
        rows = [self.constant_row_values(x, finite) for x, finite in zip(xs, finites, strict=True)]
        fit_valid = []
        for finite, r in zip(finites, rows, strict=True):
            if r is not None:
                finite = finite.copy()
                finite[:, list(self.config.constant_rows), :] = False
            fit_valid.append(finite)
        fitted = self.fit_chunks_coeffs([self._normalise(x) for x in xs], fit_valid, steps, rate_weight, rows)
        found: list[dict[str, bytes]] = []
        for x, finite, r, bound, dtype, (grids, coeffs) in zip(xs, finites, rows, max_abs_errors, dtypes, fitted,
                                                               strict=True):
            cp = None
            if self.config.predict_previous:
                coeffs, cp = coeffs[:, :-1], coeffs[:, -1]
            out = {"G": self.compress_grids([[g[i] for g in grids] for i in range(x.shape[0])])}
            if self.config.basis:
                out["P"], coeffs = self._coefficient_section(coeffs, rate_weight, hw)
            if cp is not None and x.shape[0] > 1:
                cp = _half(cp)
                out["Q"] = cp[1:].astype("<f2").tobytes()
            if r is not None:
                out["O"] = r.astype("<f2").tobytes()
            if bound is not None or residual_bpv is not None:
                pred = self.synthesize_grids(grids, hw, coeffs, cp, r)  # (B, 0) without a basis: ignored
                if residual_bpv is not None:
                    out["S"] = encode_sperr_residual(np.where(finite, x - pred, 0.0), residual_bpv)
                if bound is not None:
                    if "S" in out:  # the bound applies to what a decoder gets: prediction + SPERR's residual
                        pred = pred + decode_sperr_residual(out["S"], x.shape)
                    out["R"] = _encode_residual(x[..., None], pred[..., None], finite[..., None], bound, dtype)
            found.append(out)
        return found

    def _coefficient_section(self, coeffs: np.ndarray, rate_weight: float,
                             hw: tuple[int, int]) -> tuple[bytes, np.ndarray]:
        """Basis coefficients ``(B, k)`` -> section ``P`` and the coefficients ``(B, k)`` a
        decoder reads from it: float16 (format 0) without a coefficient coder, else quantized
        at the step the rate weight calls for and range-coded (format 1)."""
        if self.coeff_coder is None:
            c16 = _half(coeffs)
            return bytes([COEFFS_FLOAT16]) + c16.astype("<f2").tobytes(), c16
        e = step_code(rate_weight, hw[0] * hw[1])
        q = self.coeff_coder.quantize(coeffs, e)
        return bytes([COEFFS_CODED]) + self.coeff_coder.compress(q, e), self.coeff_coder.dequantize(q, e)

    def _stored_coefficients(self, coeffs: np.ndarray, rate_weight: float, hw: tuple[int, int]) -> np.ndarray:
        """The coefficients ``(B, k)`` a decoder reads back from :meth:`_coefficient_section`,
        without range-coding them (element-wise, so the same for any subset of fields)."""
        if self.coeff_coder is None:
            return _half(coeffs)
        e = step_code(rate_weight, hw[0] * hw[1])
        return self.coeff_coder.dequantize(self.coeff_coder.quantize(coeffs, e), e)

    def decode_many(self, blobs: Sequence[bytes | bytearray | memoryview]) -> list[np.ndarray]:
        parsed = [self._parse(b) for b in blobs]
        out: list[np.ndarray] = []
        for p in parsed:
            if "K" in p.chunk.sections:
                out.append(p.constant())
                continue
            if "G" not in p.chunk.sections:
                raise BitstreamError("chunk has neither latent grids nor a constant section")
            hw = (p.full[1], p.full[2])
            items = self.decompress_grids(p.chunk.sections["G"], p.items, self.config.level_shapes(hw))
            grids = [np.stack([it[lv] for it in items]) for lv in range(self.config.levels)]
            values = self.synthesize_grids(grids, hw, self._coefficients(p.chunk.sections, p.items),
                                           self._predictor_coefficients(p.chunk.sections, p.items),
                                           self._row_values(p.chunk.sections, p.items))
            if "S" in p.chunk.sections:
                values = values + decode_sperr_residual(bytes(p.chunk.sections["S"]), (p.items, *hw))
            out.append(p.finish(values[..., None]))
        return out

    def _coefficients(self, sections: dict[str, bytes], items: int) -> np.ndarray | None:
        """The ``P`` section -> basis coefficients ``(items, k)`` (None without a basis)."""
        k = self.config.basis
        if not k:
            if "P" in sections:
                raise BitstreamError("chunk holds basis coefficients (section P) but the model has no basis")
            return None
        payload = sections.get("P")
        if not payload:
            raise BitstreamError("chunk has no basis coefficients (section P) but the model has a basis")
        if payload[0] == COEFFS_CODED:
            if self.coeff_coder is None:
                raise BitstreamError("chunk's basis coefficients are entropy-coded but the model has no "
                                     "coefficient coder")
            q, e = self.coeff_coder.decompress(bytes(payload[1:]), items)
            return self.coeff_coder.dequantize(q, e)
        if payload[0] != COEFFS_FLOAT16:
            raise BitstreamError(f"chunk's basis coefficients: unknown format {payload[0]}")
        if len(payload) != 1 + 2 * k * items:
            raise BitstreamError(f"chunk's float16 basis coefficients: need {1 + 2 * k * items} bytes (section P), "
                                 f"got {len(payload)}")
        c = np.frombuffer(payload, "<f2", offset=1).astype(np.float32).reshape(items, k)
        if not np.isfinite(c).all():
            raise BitstreamError("chunk's basis coefficients are not finite")
        return c

    def _predictor_coefficients(self, sections: dict[str, bytes], items: int) -> np.ndarray | None:
        """The ``Q`` section -> the previous-field predictor's coefficients ``(items,)`` (the
        first 0; None for a model without the predictor)."""
        if not self.config.predict_previous:
            if "Q" in sections:
                raise BitstreamError("chunk holds previous-field predictor coefficients (section Q) but the "
                                     "model has no such predictor")
            return None
        payload = sections.get("Q", b"")
        if items > 1 and "Q" not in sections:
            raise BitstreamError("chunk has no predictor coefficients (section Q) but the model predicts each "
                                 "field from the previous one")
        if len(payload) != 2 * (items - 1):
            raise BitstreamError(f"chunk's predictor coefficients: need {2 * (items - 1)} bytes (section Q) for "
                                 f"{items} fields, got {len(payload)}")
        c = np.frombuffer(bytes(payload), "<f2").astype(np.float32)
        if not np.isfinite(c).all():
            raise BitstreamError("chunk's predictor coefficients are not finite")
        return np.concatenate([np.zeros(1, np.float32), c])

    def _row_values(self, sections: dict[str, bytes], items: int) -> np.ndarray | None:
        """The ``O`` section -> the constant rows' normalised values ``(items, R)`` (None when
        the chunk has none: its rows were synthesised)."""
        if "O" not in sections:
            return None
        rows = self.config.constant_rows
        if not rows:
            raise BitstreamError("chunk holds constant-row values (section O) but the model has no constant rows")
        payload = bytes(sections["O"])
        if len(payload) != 2 * items * len(rows):
            raise BitstreamError(f"chunk's constant-row values: need {2 * items * len(rows)} bytes (section O) for "
                                 f"{items} fields x {len(rows)} rows, got {len(payload)}")
        v = np.frombuffer(payload, "<f2").astype(np.float32).reshape(items, len(rows))
        if not np.isfinite(v).all():
            raise BitstreamError("chunk's constant-row values are not finite")
        return v

    def _parse(self, data: bytes | bytearray | memoryview) -> _Parsed:
        chunk = self._unpack_own(data)
        try:
            hw = self._shape(chunk.shape)
        except ValueError as exc:
            raise BitstreamError(f"chunk shape {chunk.shape} does not fit this model: {exc}") from exc
        if tuple(chunk.patch) != hw:
            raise BitstreamError(f"chunk layout {chunk.patch} differs from its field shape {hw}")
        b = math.prod(chunk.shape[:-2])
        full = (b, *hw, 1)
        invalid = self._invalid_mask(chunk, full)
        if "L" in chunk.sections:
            raise BitstreamError("chunk holds patch latents (section L), not latent grids")
        return _Parsed(chunk, None, b, full, invalid)  # type: ignore[arg-type]


def _rows_constant(x: np.ndarray, finite: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fields ``x (B, H, W)`` and their finite mask -> ``(constant, value)`` ``(B, H)``: whether
    each field's row is constant among its finite values (vacuously true without any), and its
    largest finite value (NaN without any) — the row's value where it is constant."""
    lo = np.where(finite, x, np.inf).min(axis=2)
    hi = np.where(finite, x, -np.inf).max(axis=2)
    has = finite.any(axis=2)
    return (lo == hi) | ~has, np.where(has, hi, np.nan)


def detect_constant_rows(data: np.ndarray) -> tuple[int, ...]:
    """Rows of fields ``data (..., H, W)`` that are constant (among their finite values) in
    every field and finite somewhere — the poles of a latitude–longitude grid that includes
    them — for :meth:`GridModel.with_constant_rows`."""
    x = np.asarray(data, np.float64).reshape(-1, *np.shape(data)[-2:])
    constant, value = _rows_constant(x, np.isfinite(x))
    return tuple(int(r) for r in np.flatnonzero(constant.all(axis=0) & np.isfinite(value).any(axis=0)))


# ------------------------------------------------------------------------------ training
def climatology_input(mean: np.ndarray, device: torch.device) -> torch.Tensor:
    """The mean field ``(H, W)`` standardised to zero mean and unit std -> ``(1, 1, H, W)``,
    the synthesis network's climatology channel."""
    m = np.asarray(mean, np.float64)
    c = (m - m.mean()) / max(float(m.std()), 1e-12)
    return torch.from_numpy(c.astype(np.float32))[None, None].to(device)


def train_grid_model(
    data: np.ndarray, config: GridConfig | None = None, train: GridTrainConfig | None = None,
    log: Any = None,
) -> GridModel:
    """Learn a latent-grid model from training fields ``data (N, H, W)`` (NaN = missing).

    The synthesis network, the rate proxy and one latent set per (field, rate weight) are
    optimised jointly (Adam, cosine decay; additive uniform noise stands in for rounding,
    then straight-through rounding for the next ``ste_fraction`` of the steps and stochastic
    Gumbel annealing, as the encoder does, for the last ``sga_fraction``). The entropy
    tables are then counted from the rounded training latents. With ``config.basis = k``
    the synthesis adds the training anomalies' top ``k`` principal components
    (:func:`principal_components`), with per-item coefficients trained alongside the latents
    (``k`` must stay below the number of fields minus one: a basis that spans the training
    anomalies leaves the latents nothing to learn).
    """
    config = config or GridConfig()
    train = train or GridTrainConfig()
    x = np.asarray(data, np.float64)
    if x.ndim < 3:
        raise ValueError(f"training data must be (N, H, W) fields, got shape {x.shape}")
    x = x.reshape(-1, *x.shape[-2:])
    hw = (x.shape[1], x.shape[2])
    valid = np.isfinite(x)
    if not valid.any():
        raise ValueError("training data holds no finite values")
    if config.climatology:
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(x, axis=0)
        mean = np.where(np.isfinite(mean), mean, np.nanmean(x))
        config = dataclasses.replace(config, field_shape=hw)
    else:
        mean = np.asarray(np.nanmean(x))
    std = float(np.nanstd(x - mean)) or 1.0
    torch.manual_seed(train.seed)
    device = pick_device(train.device)
    net = GridSynthesis(config).to(device)
    mean32 = mean.astype(np.float32)
    std32 = float(np.float32(std))  # the model stores std as float32: normalise as it will
    normed = torch.from_numpy(np.where(valid, (x - mean32.astype(np.float64)) / std32, 0.0).astype(np.float32)).to(device)
    mask = torch.from_numpy(valid.astype(np.float32)).to(device)
    lams = torch.tensor([lam for _ in range(x.shape[0]) for lam in train.rate_weights], device=device)
    item = torch.tensor([i for i in range(x.shape[0]) for _ in train.rate_weights], device=device)
    shapes = config.level_shapes(hw)
    latents = [torch.nn.Parameter(torch.zeros((len(item), *s), device=device)) for s in shapes]
    coeffs = torch.nn.Parameter(torch.zeros((len(item), config.basis), device=device))
    energy = None
    if config.basis:
        if config.basis >= x.shape[0] - 1:
            raise ValueError(f"a basis of {config.basis} components spans the anomalies of all {x.shape[0]} training "
                             "fields, so the latents would learn nothing: train with fewer components "
                             "(well below the number of fields) or add the basis after training (fit_basis)")
        basis, energy = principal_components(normed.cpu().numpy().astype(np.float64), valid, config.basis)
        net.basis.copy_(torch.from_numpy(basis))  # type: ignore[union-attr]
        with torch.no_grad():
            coeffs.copy_(project_on_basis(normed[item], net.basis))  # type: ignore[arg-type]
    clim = climatology_input(mean32, device) if config.climatology else None
    final, history, seconds = _auto_decode(net, latents, normed, mask, item, lams, train, clim, coeffs, log)
    entropy = GridEntropyModel.fit([[g[i] for g in final] for i in range(len(item))], config.max_symbol,
                                   config.contexts)
    report = {"kind": KIND, "train": train.to_dict(), "items": int(x.shape[0]), "field_shape": list(hw),
              "device": str(device),
              "history": history, "train_seconds": seconds}
    if energy is not None:
        report["basis"] = {"components": config.basis, "fields": int(x.shape[0]), "energy": energy}
    coder = CoefficientCoder.fit(coeffs.detach().cpu().numpy()) if config.basis else None
    return GridModel(config, net.cpu(), mean32, std, entropy, report, coeff_coder=coder)


def _noise_generator(cpu_gen: torch.Generator, device: torch.device, seed: int) -> torch.Generator:
    """The generator of the noise a training loop draws on ``device``: ``cpu_gen`` itself on the
    CPU (its stream unchanged), else one on the device seeded with ``seed`` — a CPU draw copied
    to a GPU each step waits for the GPU."""
    return cpu_gen if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed)


def _auto_decode(net: GridSynthesis, latents: list[torch.nn.Parameter], targets: torch.Tensor, mask: torch.Tensor,
                 item: torch.Tensor, lams: torch.Tensor, train: GridTrainConfig, clim: torch.Tensor | None,
                 coeffs: torch.nn.Parameter | None, log: Any = None) -> tuple[list[np.ndarray], list[dict[str, float]], float]:
    """Optimise the synthesis ``net`` and one latent set per row of ``item`` / ``lams`` jointly
    (auto-decoder) on ``targets (N, H, W)`` (normalised, 0 at missing points; ``mask`` 1 where
    valid): set ``j`` reconstructs ``targets[item[j]]`` at rate weight ``lams[j]``. Adam with
    cosine decay; additive uniform noise stands in for rounding, then straight-through rounding
    for the next ``train.ste_fraction`` of the steps and stochastic Gumbel annealing for the
    last ``train.sga_fraction``. With a basis in ``net``: ``coeffs (len(item), k)`` trained
    alongside, or None for zero coefficients (targets that are already basis residuals).
    Returns the rounded, clipped latents ``L × (len(item), h_l, w_l)``, the log and seconds."""
    device = targets.device
    hw = (targets.shape[1], targets.shape[2])
    group = [*latents] if coeffs is None else [*latents, coeffs]
    opt = torch.optim.Adam([{"params": net.parameters(), "lr": train.lr}, {"params": group, "lr": train.latent_lr}])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(train.steps, 1))
    gen = torch.Generator(device="cpu").manual_seed(train.seed)
    noise_gen = _noise_generator(gen, device, train.seed)
    k_basis = 0 if net.basis is None else net.basis.shape[0]
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    net.train()
    for step in range(train.steps):
        bi = torch.randint(0, len(item), (min(train.batch, len(item)),), generator=gen).to(device)
        zs = [z[bi] for z in latents]
        noisy = [z + torch.rand(z.shape, generator=noise_gen, device=device) - 0.5 for z in zs]
        rounded = [torch.round(z).detach() for z in zs]
        n_sga = int(train.sga_fraction * train.steps)
        if step < (1 - train.ste_fraction) * train.steps - n_sga:
            zq = noisy
        elif step < train.steps - n_sga:
            zq = [z + (r - z).detach() for z, r in zip(zs, rounded, strict=True)]
        else:
            tau = sga_temperature(step - (train.steps - n_sga), n_sga)
            zq = [soft_round_sga(z, tau, noise_gen) for z in zs]
        c = None
        if k_basis:
            c = coeffs[bi] if coeffs is not None else torch.zeros(len(bi), k_basis, device=device)
        rec = net(zq, clim, hw, c)
        mse = masked_mse(rec, targets[item[bi]], mask[item[bi]])
        bpv = net.rate_bits(noisy, rounded) / (hw[0] * hw[1])
        loss = (mse + lams[bi] * bpv).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % train.log_every == 0 or step == train.steps - 1:
            rec_ = {"step": step, "mse": float(mse.detach().mean()), "bpv": float(bpv.detach().mean()),
                    "time_s": time.perf_counter() - t0}
            history.append(rec_)
            if log is not None:
                log(rec_)
    net.eval()
    k = net.config.max_symbol
    final = [torch.round(z.detach()).clamp(-k, k).long().cpu().numpy() for z in latents]
    return final, history, time.perf_counter() - t0


def finetune_for_basis(model: GridModel, data: np.ndarray, train: GridTrainConfig, *,
                       gaps: Sequence[int] = (2, 6), log: Any = None) -> GridModel:
    """A copy of basis ``model`` whose synthesis (and rate proxy) is trained further on the task
    a held-out field poses: each training field ``data (N, H, W)`` (archive order) minus its
    projection on a basis computed without it and its ``g`` neighbours on either side
    (:func:`_cross_fitted`, one target per field and gap), coded by fresh auto-decoder latents
    per target and rate weight (:func:`_auto_decode`, ``train``'s schedule; the network starts
    from the model's). A basis added after training leaves a synthesis trained on whole
    anomalies; held-out fields need it for what the basis cannot express. Basis and
    coefficient coder are kept, the pooled entropy tables recounted from the new latents;
    table sets and ARM (fitted for the old network) are dropped: refit them
    (:func:`fit_coders`)."""
    if not model.config.basis:
        raise ValueError("finetune_for_basis needs a model with a basis (fit_basis)")
    gap_list = _gap_list(gaps)
    x, valid = _fields_to_fit(model, data)
    normed = np.where(valid, model._normalise(x), 0.0)
    parts = []
    for g in gap_list:
        for basis, f in _fold_bases(normed, valid, model.config.basis, g):
            t, b = torch.from_numpy(normed[f].astype(np.float32)), torch.from_numpy(basis)
            parts.append(t - torch.einsum("bk,khw->bhw", project_on_basis(t, b), b))
    targets = torch.cat(parts).to(model.device)
    mask = torch.from_numpy(np.concatenate([valid] * len(gap_list)).astype(np.float32)).to(model.device)
    n = targets.shape[0]
    lams = torch.tensor([lam for _ in range(n) for lam in train.rate_weights], device=model.device)
    item = torch.tensor([i for i in range(n) for _ in train.rate_weights], device=model.device)
    net = copy.deepcopy(model.network)
    assert isinstance(net, GridSynthesis)
    latents = [torch.nn.Parameter(torch.zeros((len(item), *s), device=model.device))
               for s in model.config.level_shapes((x.shape[1], x.shape[2]))]
    final, history, seconds = _auto_decode(net, latents, targets, mask, item, lams, train, model._climatology(),
                                           None, log)
    tables = GridEntropyModel.fit([[g[i] for g in final] for i in range(len(item))], model.config.max_symbol,
                                  model.config.contexts)
    report = {k: v for k, v in model.report.items() if k not in ("table_sets", "table_sets_from", "arm")}
    report["basis_finetune"] = {"from": model.sha256, "gaps": gap_list,
                                "fields": int(x.shape[0]), "train": train.to_dict(), "history": history,
                                "seconds": seconds}
    return GridModel(model.config, net.cpu(), model.mean, float(model.std[0]), tables, report,
                     coeff_coder=model.coeff_coder).to(model.device)


def _fields_to_fit(model: GridModel, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Training fields ``data (..., H, W)`` -> ``(N, H, W)`` float64 fields the model can
    encode (raises otherwise) without the all-missing ones, and their finite mask."""
    x = np.asarray(data, np.float64)
    x = x.reshape(-1, *x.shape[-2:])
    model._shape(x.shape)  # raises on fields the model cannot encode
    valid = np.isfinite(x)
    keep = [i for i in range(x.shape[0]) if valid[i].any()]
    if not keep:
        raise ValueError("training data holds no finite values")
    return x[keep], valid[keep]


def _half(c: np.ndarray | float) -> np.ndarray:
    """Coefficients as float16 stores them (clipped to its finite range), as float32."""
    fmax = float(np.finfo(np.float16).max)
    return np.clip(np.nan_to_num(np.asarray(c, np.float32)), -fmax, fmax).astype(np.float16).astype(np.float32)


def masked_mse(rec: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error ``(B,)`` of ``rec`` vs ``x (B, H, W)`` over the points where
    ``mask`` is 1 (at least one point counted per field)."""
    return (((rec - x) ** 2) * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1.0)


def fit_analysis(model: GridModel, data: np.ndarray, *, channels: int = 16, steps: int = 1500, batch: int = 16,
                 rate_weights: tuple[float, float] = (0.03, 30.0), lr: float = 2e-3, seed: int = 0,
                 ste_fraction: float = 0.3, log: Any = None) -> GridModel:
    """A copy of ``model`` with an analysis network (:class:`GridAnalysis`, ``channels`` wide)
    fitted on training fields ``data (N, H, W)``: the guess for a field at rate weight lambda
    (log-uniform in ``rate_weights``) goes through the model's frozen synthesis and rate
    proxy with uniform noise for rounding (the last ``ste_fraction`` of the steps: straight-
    through rounding, as ``steps=0`` rounds the guess), minimising MSE + lambda * bits per
    value, as the encoder does. Below the model's default step count the encoder then starts
    from the guess, and ``steps=0`` encodes with the guess alone (one forward pass instead of
    hundreds of gradient steps). Synthesis, entropy tables and so decoding are unchanged; an
    analysis network the model already has is replaced; the copy has its own model id. Runs
    on the model's device."""
    lo, hi = (float(v) for v in rate_weights)
    if not (0 < lo <= hi and math.isfinite(hi)):
        raise ValueError(f"rate_weights must be a range 0 < lo <= hi, got {rate_weights}")
    if channels < 1 or steps < 1 or batch < 1:
        raise ValueError("channels, steps and batch must be >= 1")
    if not 0 <= ste_fraction <= 1:
        raise ValueError(f"ste_fraction must be in [0, 1], got {ste_fraction}")
    x, valid = _fields_to_fit(model, data)
    config = dataclasses.replace(model.config, analysis_channels=int(channels))
    torch.manual_seed(seed)
    device = model.device
    net = GridSynthesis(config)
    synthesis = {k: v for k, v in model.network.state_dict().items() if not k.startswith("analysis.")}
    missing, unexpected = net.load_state_dict(synthesis, strict=False)
    if unexpected or any(not k.startswith("analysis.") for k in missing):
        raise ValueError(f"synthesis weights do not fit: missing {missing}, unexpected {unexpected}")
    net.to(device)
    for name, p in net.named_parameters():
        p.requires_grad_(name.startswith("analysis."))
    analysis = net.analysis
    assert analysis is not None
    xt = torch.from_numpy(np.where(valid, model._normalise(x), 0.0).astype(np.float32)).to(device)
    mt = torch.from_numpy(valid.astype(np.float32)).to(device)
    hw = (x.shape[1], x.shape[2])
    clim = climatology_input(model.mean, device) if config.climatology else None
    opt = torch.optim.Adam(analysis.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    noise_gen = _noise_generator(gen, device, seed)
    t0 = time.perf_counter()
    net.train()
    for step in range(steps):
        bi = torch.randint(0, xt.shape[0], (min(batch, xt.shape[0]),), generator=gen).to(device)
        lam = (lo * (hi / lo) ** torch.rand(len(bi), generator=gen)).to(device)
        zs = analysis(xt[bi], clim, lam)
        coeffs = model.basis_coefficients(xt[bi]) if config.basis else None  # the encoder's start
        noisy = [z + torch.rand(z.shape, generator=noise_gen, device=device) - 0.5 for z in zs]
        if step >= (1 - ste_fraction) * steps:  # straight-through rounding, as steps=0 will round
            rec = net([z + (torch.round(z) - z).detach() for z in zs], clim, hw, coeffs)
        else:
            rec = net(noisy, clim, hw, coeffs)
        mse = masked_mse(rec, xt[bi], mt[bi])
        bpv = net.rate_bits(noisy, [torch.round(z).detach() for z in zs]) / (hw[0] * hw[1])
        loss = (mse + lam * bpv).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log is not None and (step % max(steps // 10, 1) == 0 or step == steps - 1):
            log({"step": step, "mse": float(mse.detach().mean()), "bpv": float(bpv.detach().mean()),
                 "time_s": time.perf_counter() - t0})
    net.requires_grad_(True)
    report = dict(model.report) | {"analysis": {
        "channels": int(channels), "steps": int(steps), "batch": int(batch), "rate_weights": [lo, hi],
        "lr": float(lr), "ste_fraction": float(ste_fraction), "fields": int(x.shape[0]),
        "seconds": time.perf_counter() - t0}}
    return model._replace(config=config, network=net.cpu(), report=report).to(device)


#: Most training fields :func:`principal_components` reads (evenly spaced beyond that).
BASIS_FIELDS = 2048


def project_on_basis(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Fields ``x (B, H, W)`` -> coefficients ``(B, k)`` on an orthogonal ``basis (k, H, W)``
    of unit RMS per point (:func:`principal_components`), or on one such basis per field,
    ``(B, k, H, W)``."""
    if basis.dim() == 4:
        return torch.einsum("bhw,bkhw->bk", x, basis) / (x.shape[1] * x.shape[2])
    return torch.einsum("bhw,khw->bk", x, basis) / (x.shape[1] * x.shape[2])


def principal_components(normed: np.ndarray, valid: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Normalised training fields ``(N, H, W)`` (missing points count as 0) -> the top ``k``
    principal components of their anomalies ``(k, H, W)`` float32, each scaled to unit RMS
    per point (so ``basis_j . basis_j / (H W) = 1``; signs fixed: each component's largest
    entry is positive), and the share of the training anomalies' energy they hold."""
    n = normed.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"a basis of {k} components needs 1 <= k <= {n} training fields")
    idx = np.unique(np.linspace(0, n - 1, min(n, BASIS_FIELDS)).round().astype(np.int64))
    a = np.where(valid[idx], normed[idx], 0.0).reshape(len(idx), -1)
    a = a - a.mean(axis=0)
    _, sv, vt = np.linalg.svd(a, full_matrices=False)
    comps = vt[:k] * np.sign(vt[:k][np.arange(k), np.abs(vt[:k]).argmax(axis=1)])[:, None]
    energy = float((sv[:k] ** 2).sum() / max((sv**2).sum(), 1e-300))
    return (comps * math.sqrt(a.shape[1])).reshape(k, *normed.shape[1:]).astype(np.float32), energy


def fit_basis(model: GridModel, data: np.ndarray, k: int) -> GridModel:
    """A copy of ``model`` whose synthesis adds ``k`` principal components of the training
    anomalies ``data (N, H, W)`` (:func:`principal_components`), weighted by per-field
    coefficients the encoder fits with the latents and stores in the chunk (``2 k`` bytes
    per field, section ``P``). Synthesis weights, entropy tables (and table sets) are kept;
    the copy has its own model id. Needs a model with a climatology and no basis yet."""
    if not model.config.climatology:
        raise ValueError("a basis needs a model with a climatology (fixed field shape)")
    if model.config.basis:
        raise ValueError(f"the model already has a basis of {model.config.basis} components")
    x, valid = _fields_to_fit(model, data)
    basis, energy = principal_components(model._normalise(x), valid, int(k))
    config = dataclasses.replace(model.config, basis=int(k))
    net = GridSynthesis(config)
    net.load_state_dict(model.network.state_dict() | {"basis": torch.from_numpy(basis)})
    report = dict(model.report) | {"basis": {"components": int(k), "fields": int(x.shape[0]),
                                             "energy": energy}}
    return fit_coefficient_coder(model._replace(config=config, network=net, report=report), x)


def fit_coefficient_coder(model: GridModel, data: np.ndarray) -> GridModel:
    """A copy of ``model`` (which has a basis) that stores the basis coefficients quantized
    and entropy-coded (section ``P`` format 1, :mod:`~coinpp_pipeline.basis_coding`) instead
    of as float16: each component's Laplace scale from the projections of the training
    fields ``data (N, H, W)`` on the basis. Chunks written before stay readable."""
    if not model.config.basis:
        raise ValueError("a coefficient coder needs a model with a basis (fit_basis)")
    x, valid = _fields_to_fit(model, data)
    normed = torch.from_numpy(np.where(valid, model._normalise(x), 0.0).astype(np.float32)).to(model.device)
    with torch.no_grad():
        coder = CoefficientCoder.fit(model.basis_coefficients(normed).cpu().numpy())
    report = dict(model.report) | {"coeff_coder": {"fields": int(x.shape[0]),
                                                   "scale_codes": coder.scale_codes.tolist()}}
    return model._replace(network=copy.deepcopy(model.network), report=report, coeff_coder=coder)


def fit_table_sets(model: GridModel, data: np.ndarray, rate_weights: Sequence[float],
                   steps: int | None = None, log: Any = None) -> GridModel:
    """A copy of ``model`` with one extra entropy table set per rate weight, counted from the
    latents the model's own encoder finds for training fields ``data (N, H, W)`` at that rate
    weight (``steps``: encoder steps, default the model's). Chunks are then coded with
    whichever set (or the pooled tables) gives the fewest bytes. The encoder's latents differ
    from the auto-decoder's training latents the pooled tables are counted from, and their
    statistics depend on the rate weight: tables per rate weight code them shorter.
    (:func:`fit_coders` with ``table_sets=True``.)"""
    return fit_coders(model, data, rate_weights, table_sets=True, steps=steps, log=log)


def fit_coders(model: GridModel, data: np.ndarray, rate_weights: Sequence[float], *, table_sets: bool = True,
               arm: bool = False, steps: int | None = None, log: Any = None, arm_hidden: int = 24,
               arm_steps: int = 3000, latents: dict[float, list[np.ndarray]] | None = None,
               arm_chunk_items: int = 1, cross_fit_gaps: Sequence[int] = (0,)) -> GridModel:
    """A copy of ``model`` with entropy coders fitted on the latents its own encoder finds
    for training fields ``data (N, H, W)`` at each rate weight (``steps``: encoder steps,
    default the model's): ``table_sets`` one table set per rate weight (replacing the
    model's), ``arm`` a learned autoregressive model (:func:`~coinpp_pipeline.latent_arm.fit_arm`)
    trained on the latents of all rate weights together (replacing the model's). Coders not
    asked for are kept. Each chunk is coded with whichever coder is shortest. With a basis,
    the training fields are encoded with bases computed without them (:func:`_cross_fitted`).
    ``latents``: a cache ``{rate weight: L grids (N, h_l, w_l)}`` of these fields' encodings by
    this model (rate weights found there are not encoded again; new ones are added).
    ``arm_chunk_items`` > 1: the ARM gets the item context (each field's previous one in the
    chunk, :mod:`~coinpp_pipeline.latent_arm`), trained on runs of that many consecutive
    training fields as chunks (the fields in ``data`` order: give them in archive order).
    ``cross_fit_gaps`` (basis models): each gap ``g`` is one pass over the training fields,
    each field encoded with a basis computed without it and without its ``g`` neighbours on
    either side (``data`` in archive order) — a held-out field lies further from the
    training fields than a left-out field does from its neighbours; several gaps give the
    coders that spread (and more items). A model with ``predict_previous`` is fitted on
    latents encoded without the predictor (each training field on its own)."""
    if arm_chunk_items < 1:
        raise ValueError(f"arm_chunk_items must be >= 1, got {arm_chunk_items}")
    gaps = _gap_list(cross_fit_gaps)
    if gaps != [0] and not model.config.basis:
        raise ValueError("cross_fit_gaps apply to models with a basis")
    lams = list(dict.fromkeys(check_rate_weight(lam, "each rate weight") for lam in rate_weights))
    if not lams:
        raise ValueError("fit_coders needs at least one rate weight")
    if not (table_sets or arm):
        raise ValueError("fit_coders: ask for table_sets and/or arm")
    x, valid = _fields_to_fit(model, data)
    normed = model._normalise(x)
    n_steps = model.config.encode_steps if steps is None else int(steps)
    k = model.config.max_symbol
    sets, pooled = [], []
    t0 = time.perf_counter()
    # the training fields are encoded one by one (each its own chunk): without the predictor
    enc = model.with_previous_predictor(False) if model.config.predict_previous else model
    n_folds = _n_folds(x.shape[0]) if model.config.basis else 1
    n_items = x.shape[0] * len(gaps)
    for lam in lams:
        if latents is not None and lam in latents:
            grids = latents[lam]
            if grids[0].shape[0] != n_items:
                raise ValueError(f"latents cache for rate weight {lam} holds {grids[0].shape[0]} items, expected "
                                 f"{n_items} ({x.shape[0]} fields x {len(gaps)} cross-fit gaps)")
        else:
            grids = _encode_cross_fitted(enc, normed, valid, n_steps, lam, gaps)
            if latents is not None:
                latents[lam] = grids
        items = [[g[i] for g in grids] for i in range(n_items)]
        pooled += items
        if table_sets:
            sets.append(GridEntropyModel.fit(items, k, model.config.contexts))
        if log is not None:
            log({"rate_weight": lam, "fields": x.shape[0], "time_s": time.perf_counter() - t0})
    source: dict[str, Any] = {"encoder_steps": n_steps, "fields": int(x.shape[0]), "seconds": time.perf_counter() - t0}
    if n_folds > 1:
        source["basis_folds"] = n_folds
    if gaps != [0]:
        source["basis_gaps"] = gaps
    report = dict(model.report)
    if table_sets:
        report |= {"table_sets": lams, "table_sets_from": source}
    new_arm = model.arm
    if arm:
        t1 = time.perf_counter()
        starts = None
        if arm_chunk_items > 1:  # per rate weight's block of fields: a chunk every arm_chunk_items
            starts = [i % arm_chunk_items == 0 for _ in lams for _ in gaps for i in range(x.shape[0])]
        new_arm = fit_arm(pooled, k, hidden=arm_hidden, steps=arm_steps, starts=starts)
        report |= {"arm": {"rate_weights": lams, "hidden": arm_hidden, "steps": arm_steps, **source,
                           **({"chunk_items": arm_chunk_items} if arm_chunk_items > 1 else {}),
                           "seconds": time.perf_counter() - t1}}
        if log is not None:
            log({"arm": "fitted", "time_s": time.perf_counter() - t0})
    return model._replace(network=copy.deepcopy(model.network), report=report,
                          table_sets=sets if table_sets else model.table_sets, arm=new_arm)


#: Training fields up to which :func:`fit_coders` cross-fits a basis leave-one-out (more:
#: this many folds).
CROSS_FIT_FIELDS = 32
CROSS_FIT_FOLDS = 8


def _n_folds(n: int) -> int:
    """Folds of ``n`` training fields in cross-fitting (:func:`_fold_bases`)."""
    return n if n <= CROSS_FIT_FIELDS else CROSS_FIT_FOLDS


def _gap_list(gaps: Sequence[int]) -> list[int]:
    """Cross-fitting gaps (:func:`_cross_fitted`) without repeats, checked."""
    out = [int(g) for g in dict.fromkeys(gaps)]
    if not out or min(out) < 0:
        raise ValueError(f"cross-fitting gaps must be integers >= 0, got {list(gaps)}")
    return out


def _cross_fitted(model: GridModel, normed: np.ndarray, valid: np.ndarray,
                  gap: int = 0) -> list[tuple[GridModel, slice]]:
    """``(model, fields)`` pairs — contiguous slices covering ``0 .. N`` in order — to encode the
    training fields ``normed (N, H, W)`` with, for fitting entropy coders. Without a basis: the
    model for all. With one, the training fields' own principal components would absorb their
    anomalies (16 components of 17 t2m fields span them all: the latents come out nearly
    empty, unlike any held-out field's), so each fold is encoded with a copy of the model whose
    basis comes from :func:`_fold_bases`."""
    n, k = normed.shape[0], model.config.basis
    if not k:
        return [(model, slice(0, n))]
    out = []
    for basis, part in _fold_bases(normed, valid, k, gap):
        net = GridSynthesis(model.config)
        net.load_state_dict(model.network.state_dict() | {"basis": torch.from_numpy(basis)})
        out.append((model._replace(network=net, report=None), part))
    return out


def _encode_cross_fitted(model: GridModel, normed: np.ndarray, valid: np.ndarray, steps: int,
                         rate_weight: float, gaps: Sequence[int]) -> list[np.ndarray]:
    """The training fields ``normed (N, H, W)`` encoded for fitting coders -> ``L`` grids
    ``(N * len(gaps), h_l, w_l)``, gap after gap: with a basis, each field with the basis of
    its fold (:func:`_fold_bases`, per gap); the fields of different folds share a batch
    (per-item bases, :meth:`GridModel.fit_grids_coeffs`), so a GPU encodes them together
    instead of one fold (often one field) at a time. A model whose encoder rate has the item
    context encodes fold by fold (:func:`_cross_fitted`, each fold a chunk in order)."""
    if not model.config.basis:
        return model.fit_fields(normed, valid, steps, rate_weight)
    if model.config.encode_rate == "arm" and model.arm is not None and model.arm.item_context:
        models = [(m, f) for g in gaps for m, f in _cross_fitted(model, normed, valid, gap=g)]
        return [np.concatenate(g) for g in zip(*(m.fit_fields(normed[f], valid[f], steps, rate_weight)
                                                 for m, f in models), strict=True)]
    folds = [fb for g in gaps for fb in _fold_bases(normed, valid, model.config.basis, g)]
    field = np.concatenate([np.arange(f.start, f.stop) for _, f in folds])
    fold = np.concatenate([np.full(f.stop - f.start, i) for i, (_, f) in enumerate(folds)])
    bases = torch.from_numpy(np.stack([b for b, _ in folds])).to(model.device)  # (F, k, H, W)
    points = ENCODE_POINTS_CUDA if model.device.type == "cuda" else ENCODE_POINTS
    parts = [model.fit_grids_coeffs(normed[field[b]], valid[field[b]], steps, rate_weight,
                                    bases=bases[torch.from_numpy(fold[b]).to(model.device)])[0]
             for b in encode_batches(len(field), (normed.shape[1], normed.shape[2]), points)]
    return [np.concatenate([p[lv] for p in parts]) for lv in range(model.config.levels)]


def _fold_bases(normed: np.ndarray, valid: np.ndarray, k: int, gap: int = 0) -> list[tuple[np.ndarray, slice]]:
    """``(basis (k, H, W) float32, fields)`` per fold of the training fields ``normed (N, H, W)``
    (contiguous slices covering ``0 .. N`` in order): leave-one-out up to
    :data:`CROSS_FIT_FIELDS` fields, else :data:`CROSS_FIT_FOLDS` folds; each basis computed
    without the fold and ``gap`` more fields on either side of it. Components beyond what the
    remaining fields span (their number minus one) are zero."""
    n = normed.shape[0]
    out = []
    for fold in np.array_split(np.arange(n), _n_folds(n)):
        part = slice(int(fold[0]), int(fold[-1]) + 1)
        rest = np.r_[0 : max(part.start - gap, 0), min(part.stop + gap, n) : n]
        if len(rest) < 2:
            raise ValueError(f"cross-fitting a basis needs at least 2 training fields outside each fold and its "
                             f"gap of {gap} on either side; got {n} fields")
        basis = np.zeros((k, *normed.shape[1:]), np.float32)
        span = min(k, len(rest) - 1)
        basis[:span] = principal_components(normed[rest], valid[rest], span)[0]
        out.append((basis, part))
    return out


def fit_rate_proxy(model: GridModel) -> GridModel:
    """A copy of ``model`` whose rate proxy (the Laplace scales, and locations for the causal
    scheme, that the encoder optimises against) is refitted to the coder's frequency tables:
    for every context, the Laplace that minimises the cross-entropy between the table and its
    quantized form. Decoding does not depend on the proxy; encoding then spends bits where
    the real coder charges them."""
    counts = model.tables.counts.astype(np.float64)
    p = counts / counts.sum(-1, keepdims=True)  # (L, *contexts, 2K+1)
    k = np.arange(counts.shape[-1]) - model.tables.max_symbol
    scales = np.exp(np.linspace(np.log(0.02), np.log(50.0), 128))
    locs = np.linspace(-1.0, 1.0, 21) if model.config.contexts == "causal" else np.zeros(1)
    sc, lo = (a.ravel() for a in np.meshgrid(scales, locs, indexing="ij"))

    def cdf(v: np.ndarray) -> np.ndarray:
        return 0.5 + 0.5 * np.sign(v) * (1 - np.exp(-np.abs(v) / sc[:, None]))

    v = k[None] - lo[:, None]
    q = np.clip(cdf(v + 0.5) - cdf(v - 0.5), 1e-12, 1.0)  # (S, 2K+1)
    best = np.argmin(-np.einsum("...k,sk->...s", p, np.log(q)), axis=-1)
    net = GridSynthesis(model.config)
    net.load_state_dict(model.network.state_dict())
    with torch.no_grad():
        net.log_scale.copy_(torch.from_numpy(np.log(sc[best])).float())
        if net.loc is not None:
            net.loc.copy_(torch.from_numpy(lo[best]).float())
    return model._replace(network=net, report=dict(model.report))
