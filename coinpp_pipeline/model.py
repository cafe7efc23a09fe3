"""The public model object: network + normalisation + quantizer + entropy model, with
``encode(array) -> bytes`` and ``decode(bytes) -> array``."""

from __future__ import annotations

import dataclasses
import math
import struct
from collections.abc import Sequence
from typing import Any

import constriction
import numpy as np
import torch

from . import bitstream, checkpoints
from .config import ModelConfig
from .coordinates import (
    PatchLayout,
    patch_coordinates,
    patchify,
    split_items,
    split_shape,
    unpatchify,
)
from .entropy import EntropyModel
from .errors import BitstreamError, ModelFileError, ModelMismatchError, NotFittedError
from .metalearning import fit_latents, pick_device
from .network import ModulatedSiren
from .quantization import Quantizer

#: Activations budget per forward batch (floats); patches are batched up to this size.
ENCODE_BUDGET = 1 << 22
DECODE_BUDGET = 1 << 24
#: Largest residual symbol magnitude of the error-bounded mode.
MAX_RESIDUAL_SYMBOL = 1 << 24
#: Share of the error bound kept back for floating-point differences between the encoder's
#: and a decoder's forward pass (threads, batch sizes, CPU vs GPU).
BOUND_MARGIN = 1.0 / 256.0


def check_dtype(dtype: np.dtype) -> None:
    """Raise TypeError for dtypes coinpp cannot store (it stores float and integer data)."""
    if dtype.kind not in "fiu" or dtype.itemsize > 8:
        raise TypeError(
            f"coinpp encodes float and integer arrays only; got dtype {dtype} "
            "(complex, bool, string and object arrays are not supported)"
        )


def check_rate_weight(value: object, name: str = "rate_weight") -> float:
    """``value`` as a float if it is a real number >= 0 (not a bool, not NaN or infinite),
    else a ValueError naming ``name`` and the value: the one check of a rate weight (the
    rate-distortion trade-off of latent-grid models) for codec settings, model configs,
    encoders and coder fitting."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_input(array: np.ndarray, max_abs_error: float | None) -> np.ndarray:
    """The C-contiguous array to encode, after the checks every model kind shares (dtype,
    chunk size, no infinities, a valid bound); raises TypeError/ValueError naming the problem."""
    a = np.ascontiguousarray(array)
    check_dtype(a.dtype)
    if a.size > bitstream.MAX_ELEMENTS:
        raise ValueError(f"array of {a.size} values exceeds the chunk limit of {bitstream.MAX_ELEMENTS}; use smaller chunks")
    if a.dtype.kind == "f" and np.isinf(a).any():
        raise ValueError("array holds infinite values, which coinpp cannot encode; mask them as NaN")
    if max_abs_error is not None and not (math.isfinite(max_abs_error) and max_abs_error > 0):
        raise ValueError(f"max_abs_error must be a positive finite number, got {max_abs_error}")
    return a


def chunk_bounds(max_abs_error: float | None | Sequence[float | None], n: int) -> list[float | None]:
    """``encode_many``'s ``max_abs_error`` (one bound for all ``n`` chunks, or one per chunk)
    -> one per chunk; a ValueError when the count differs."""
    bounds = list(max_abs_error) if isinstance(max_abs_error, Sequence) else [max_abs_error] * n
    if len(bounds) != n:
        raise ValueError(f"{len(bounds)} error bounds for {n} chunks")
    return bounds


class Model:
    """A meta-learned COIN++ model. Create with :func:`coinpp_pipeline.meta_train` or
    :meth:`Model.load`; identified by the sha256 of its saved bytes (:attr:`sha256`)."""

    def __init__(
        self,
        config: ModelConfig,
        network: ModulatedSiren,
        mean: np.ndarray,
        std: np.ndarray,
        quantizer: Quantizer | None,
        entropy: EntropyModel | None,
        report: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.network = network.eval()
        self.mean = np.asarray(mean, np.float32).reshape(config.channels)
        self.std = np.asarray(std, np.float32).reshape(config.channels)
        self.quantizer = quantizer
        self.entropy = entropy
        self.report = report or {}
        self.device = torch.device("cpu")
        self._bytes: bytes | None = None
        self._sha256: tuple[bytes, str] | None = None

    # ---------------------------------------------------------------- identity and files
    def to_bytes(self) -> bytes:
        """The model file's bytes (safetensors + JSON metadata); cached."""
        if self._bytes is None:
            if self.quantizer is None or self.entropy is None:
                raise NotFittedError("model has no quantizer/entropy model yet")
            tensors: dict[str, Any] = {
                f"network.{k}": v for k, v in self.network.state_dict().items()
            }
            tensors |= {
                "norm.mean": self.mean,
                "norm.std": self.std,
                "quantizer.lo": self.quantizer.lo,
                "quantizer.hi": self.quantizer.hi,
                "entropy.counts": self.entropy.counts.astype(np.int64),
            }
            desc = {"config": self.config.to_dict(), "bits": self.quantizer.bits, "report": _stable(self.report)}
            self._bytes = checkpoints.serialize(tensors, desc)
        return self._bytes

    @property
    def chunk_items(self) -> int:
        """Items per chunk the model was made for (the default time chunk of
        ``compress-archive``): 1 — a patch model codes each item on its own."""
        return 1

    @property
    def sha256(self) -> str:
        """sha256 of :meth:`to_bytes`, computed once per serialisation (it is on every
        encode/decode path through :attr:`model_id`)."""
        data = self.to_bytes()
        if self._sha256 is None or self._sha256[0] is not data:
            self._sha256 = (data, checkpoints.sha256_hex(data))
        return self._sha256[1]

    @property
    def model_id(self) -> bytes:
        return bytes.fromhex(self.sha256)[: bitstream.MODEL_ID_BYTES]

    @classmethod
    def from_bytes(cls, data: bytes, sha256: str | None = None, where: str = "<bytes>") -> Model:
        tensors, desc = checkpoints.deserialize(data, sha256, where)
        if desc.get("kind", "patch") == "grid":
            from .grid_model import GridModel

            return GridModel._from_parts(tensors, desc, data)
        if desc.get("kind", "patch") != "patch":
            raise ModelFileError(f"{where}: unknown model kind {desc.get('kind')!r}")
        config = ModelConfig.from_dict(desc["config"])
        net = ModulatedSiren(config)
        state = {k[len("network.") :]: v for k, v in tensors.items() if k.startswith("network.")}
        net.load_state_dict(state)
        quant = Quantizer(tensors["quantizer.lo"].numpy(), tensors["quantizer.hi"].numpy(), int(desc["bits"]))
        ent = EntropyModel(tensors["entropy.counts"].numpy())
        model = cls(config, net, tensors["norm.mean"].numpy(), tensors["norm.std"].numpy(), quant, ent, desc.get("report"))
        model._bytes = bytes(data)
        return model

    def save(self, url: str, **storage_options: Any) -> str:
        """Write the model file to any fsspec URL; return its sha256 (the model's identity)."""
        checkpoints.write_bytes(url, self.to_bytes(), **storage_options)
        return self.sha256

    @classmethod
    def load(cls, url: str, sha256: str | None = None, **storage_options: Any) -> Model:
        """Read a model file from any fsspec URL, verifying ``sha256`` when given."""
        return cls.from_bytes(checkpoints.read_bytes(url, **storage_options), sha256, where=url)

    def to(self, device: str | torch.device | None) -> Model:
        self.device = pick_device(str(device) if device is not None else None)
        self.network.to(self.device)
        return self

    # ---------------------------------------------------------------- latents
    def _inputs(self, layout: PatchLayout) -> torch.Tensor:
        return torch.from_numpy(patch_coordinates(layout, self.config)).to(self.device)

    def _batch_size(self, layout: PatchLayout, budget: int) -> int:
        return max(1, budget // (layout.points_per_patch * self.config.width))

    def fit_latents(self, items: np.ndarray, steps: int | None = None) -> tuple[np.ndarray, PatchLayout]:
        """Encode ``items (B, *S, C)`` to unquantized latents ``(B*P, L)`` (inner loop)."""
        layout = PatchLayout.for_shape(items.shape[1:-1], self.config)
        normed = (items.astype(np.float32) - self.mean) / self.std
        values, mask = patchify(normed, layout)
        coords = self._inputs(layout)
        steps = self.config.inner_steps if steps is None else int(steps)
        latents = np.zeros((values.shape[0], self.config.latent_dim), np.float32)
        active = np.nonzero(mask.any(axis=1))[0]
        bs = self._batch_size(layout, ENCODE_BUDGET)
        for start in range(0, len(active), bs):
            idx = active[start : start + bs]
            c = coords[torch.from_numpy(idx % layout.n_patches)]
            v = torch.from_numpy(values[idx]).to(self.device)
            m = torch.from_numpy(mask[idx]).to(self.device)
            with torch.enable_grad():
                z = fit_latents(self.network, c, v, m, steps, mode="encode")
            latents[idx] = z.cpu().numpy()
        return latents, layout

    def synthesize(self, latents: np.ndarray, layout: PatchLayout) -> np.ndarray:
        """Latents ``(B*P, L)`` -> values ``(B, *S, C)`` in original units (float64)."""
        coords = self._inputs(layout)
        out = np.empty((latents.shape[0], layout.points_per_patch, self.config.channels), np.float32)
        bs = self._batch_size(layout, DECODE_BUDGET)
        with torch.inference_mode():
            for start in range(0, latents.shape[0], bs):
                sl = slice(start, start + bs)
                idx = torch.arange(start, min(start + bs, latents.shape[0])) % layout.n_patches
                z = torch.from_numpy(latents[sl]).to(self.device)
                out[sl] = self.network(coords[idx], z).float().cpu().numpy()
        return unpatchify(out, layout).astype(np.float64) * self.std + self.mean

    # ---------------------------------------------------------------- chunks
    def encode(self, array: np.ndarray, *, steps: int | None = None, max_abs_error: float | None = None,
               rate_weight: float | None = None, residual_bpv: float | None = None) -> bytes:
        """Compress ``array (*items, *spatial[, C])`` to self-describing chunk bytes.

        NaN marks missing points (restored exactly as NaN); infinities are rejected.
        ``steps`` overrides the number of inner steps; ``max_abs_error`` adds a residual
        layer so that every decoded value is within that bound of the input.
        """
        if self.quantizer is None or self.entropy is None:
            raise NotFittedError("model has no quantizer/entropy model: meta-train or load one")
        if rate_weight is not None:
            raise ValueError(
                "rate_weight applies to latent-grid models only; a patch model's rate is set by "
                "its quantizer bits (coinpp_pipeline.model.with_bits)"
            )
        if residual_bpv is not None:
            raise ValueError("residual_bpv (the SPERR hybrid layer) applies to latent-grid models only")
        a = check_input(array, max_abs_error)
        items, _ = split_items(a, self.config)
        layout = PatchLayout.for_shape(items.shape[1:-1], self.config)
        x = items.astype(np.float64)
        # The mask is per value: a NaN in one channel must not hide the point's other channels.
        finite = np.isfinite(x)
        sections: dict[str, bytes] = {}
        if not finite.all():
            sections["M"] = bitstream.pack_mask(~finite)
        vals = x[finite]
        if vals.size == 0 or vals.min() == vals.max():
            sections["K"] = struct.pack("<d", float(vals.flat[0]) if vals.size else 0.0)
        else:
            latents, _ = self.fit_latents(items, steps)
            symbols = self.quantizer.quantize(latents)
            sections["L"] = self.entropy.compress(symbols)
            if max_abs_error is not None:
                pred = self.synthesize(self.quantizer.dequantize(symbols), layout)
                sections["R"] = _encode_residual(x, pred, finite, max_abs_error, a.dtype)
        chunk = bitstream.Chunk(a.dtype, a.shape, layout.patch, self.model_id, sections)
        return bitstream.pack(chunk)

    def encode_many(self, arrays: Sequence[np.ndarray], *, steps: int | None = None,
                    max_abs_error: float | None | Sequence[float | None] = None,
                    rate_weight: float | None = None, residual_bpv: float | None = None) -> list[bytes]:
        """:meth:`encode` of several chunks -> their bytes in order (``max_abs_error`` one bound
        for all, or one per chunk). A patch model encodes them one after the other; a
        latent-grid model batches their fields together."""
        bounds = chunk_bounds(max_abs_error, len(arrays))
        return [self.encode(a, steps=steps, max_abs_error=b, rate_weight=rate_weight, residual_bpv=residual_bpv)
                for a, b in zip(arrays, bounds, strict=True)]

    def decode(self, data: bytes | bytearray | memoryview) -> np.ndarray:
        """Chunk bytes -> the array (same shape and dtype as encoded)."""
        return self.decode_many([data])[0]

    def decode_many(self, blobs: Sequence[bytes | bytearray | memoryview]) -> list[np.ndarray]:
        """Decode several chunks; chunks with the same layout share batched forward passes.

        Every chunk is parsed and verified before any network work starts.
        """
        if self.quantizer is None or self.entropy is None:
            raise NotFittedError("model has no quantizer/entropy model: meta-train or load one")
        parsed = [self._parse(b) for b in blobs]
        results: list[np.ndarray | None] = [None] * len(parsed)
        groups: dict[PatchLayout, list[int]] = {}
        for i, p in enumerate(parsed):
            if "K" in p.chunk.sections:
                results[i] = p.constant()
            elif "L" in p.chunk.sections:
                groups.setdefault(p.layout, []).append(i)
            else:
                raise BitstreamError("chunk has neither latents nor a constant section")
        for layout, idxs in groups.items():
            latents = [
                self.quantizer.dequantize(
                    self.entropy.decompress(parsed[i].chunk.sections["L"], parsed[i].items * layout.n_patches)
                )
                for i in idxs
            ]
            values = self.synthesize(np.concatenate(latents), layout)
            offset = 0
            for i in idxs:
                p = parsed[i]
                results[i] = p.finish(values[offset : offset + p.items])
                offset += p.items
        return [r for r in results if r is not None]

    def _unpack_own(self, data: bytes | bytearray | memoryview) -> bitstream.Chunk:
        """Unpack and verify chunk bytes and check they were written by this model."""
        chunk = bitstream.unpack(data)
        if not bitstream.same_model(chunk.model_id, self.model_id):
            raise ModelMismatchError(
                f"chunk was written by model {chunk.model_id.hex()}…, not by this model "
                f"{self.sha256[:16]}…"
            )
        return chunk

    @staticmethod
    def _invalid_mask(chunk: bitstream.Chunk, full: tuple[int, ...]) -> np.ndarray | None:
        """The chunk's mask of missing values ``full``-shaped, or None."""
        if "M" not in chunk.sections:
            return None
        invalid = bitstream.unpack_mask(chunk.sections["M"], full)
        if chunk.dtype.kind != "f":
            raise BitstreamError("integer chunk cannot carry a mask of missing values")
        return invalid

    def _parse(self, data: bytes | bytearray | memoryview) -> _Parsed:
        chunk = self._unpack_own(data)
        try:
            item_shape, spatial = split_shape(chunk.shape, self.config)
            layout = PatchLayout.for_shape(spatial, self.config)
        except ValueError as exc:
            raise BitstreamError(f"chunk shape {chunk.shape} does not fit this model: {exc}") from exc
        if layout.patch != chunk.patch:
            raise BitstreamError(f"chunk patch layout {chunk.patch} differs from the model's {layout.patch}")
        b = math.prod(item_shape)
        full = (b, *layout.shape, self.config.channels)
        if "S" in chunk.sections:
            raise BitstreamError("chunk holds a SPERR residual (section S), which only latent-grid models write")
        return _Parsed(chunk, layout, b, full, self._invalid_mask(chunk, full))


class _Parsed:
    """A verified chunk waiting for its network output."""

    def __init__(self, chunk: bitstream.Chunk, layout: PatchLayout, items: int,
                 full: tuple[int, ...], invalid: np.ndarray | None) -> None:
        self.chunk, self.layout, self.items, self.full, self.invalid = chunk, layout, items, full, invalid

    def constant(self) -> np.ndarray:
        payload, dtype = self.chunk.sections["K"], self.chunk.dtype
        if len(payload) != 8:
            raise BitstreamError("constant section must hold 8 bytes")
        value = struct.unpack("<d", payload)[0]
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            value = float(np.clip(np.rint(value), info.min, info.max))
        # Allocated directly in the output dtype: no float64 copy of a large constant chunk.
        out = np.full(self.full, value, dtype=dtype)
        if self.invalid is not None:
            out[self.invalid] = np.nan
        return out.reshape(self.chunk.shape)

    def finish(self, values: np.ndarray) -> np.ndarray:
        """Network output ``(B, *S, C)`` float64 -> the stored array."""
        out = values
        if "R" in self.chunk.sections:
            out = out + _decode_residual(self.chunk.sections["R"], self.full)
        if self.invalid is not None:
            out = np.where(self.invalid, np.nan, out)
        dtype = self.chunk.dtype
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            out = np.clip(np.rint(out), info.min, info.max)
        return out.astype(dtype).reshape(self.chunk.shape)


#: Report keys holding wall-clock times: left out of model files.
WALL_CLOCK_KEYS = frozenset({"train_seconds", "seconds", "time_s"})


def _stable(report: Any) -> Any:
    """The training report without wall-clock fields (:data:`WALL_CLOCK_KEYS`, at any depth:
    training, basis, coder fitting), so equal training gives equal files."""
    if isinstance(report, dict):
        return {k: _stable(v) for k, v in report.items() if k not in WALL_CLOCK_KEYS}
    if isinstance(report, list | tuple):
        return [_stable(v) for v in report]
    return report


def fit_coding(model: Model, train_data: np.ndarray) -> None:
    """Fit the quantizer and entropy model on the latents of the training data (in place).

    ``train_data``: ``(*items, *S[, C])`` as for :meth:`Model.encode`.
    """
    items, _ = split_items(np.asarray(train_data), model.config)
    latents, layout = model.fit_latents(items)
    valid = np.isfinite(items).all(axis=-1, keepdims=True)
    _, mask = patchify(np.where(valid, 0.0, np.nan), layout)
    used = latents[mask.any(axis=1)]
    model.quantizer = Quantizer.fit(used, model.config.bits, model.config.quant_clip_std)
    symbols = model.quantizer.quantize(used)
    model.entropy = EntropyModel.fit(symbols, model.quantizer.levels)
    model._bytes = None


def with_bits(model: Model, train_data: np.ndarray, bits: int) -> Model:
    """A model sharing ``model``'s network with a quantizer of ``bits`` bits, refitted on
    ``train_data`` (a rate knob that needs no retraining). It has its own identity."""
    cfg = dataclasses.replace(model.config, bits=int(bits))
    out = Model(cfg, model.network, model.mean, model.std, None, None, model.report)
    out.device = model.device
    fit_coding(out, train_data)
    return out


# -------------------------------------------------------------------- residual layer
def _encode_residual(
    x: np.ndarray, pred: np.ndarray, valid: np.ndarray, bound: float, dtype: np.dtype
) -> bytes:
    """Quantize ``x - pred`` with bin width ``2·(bound - margin)`` to integers ``q``, pick the
    cheapest transform of ``q`` and probability model (:data:`RESIDUAL_MODES`) and
    entropy-code it. Layout: varint rmax, u8 mode, f64 bin width, f32 Laplace scale, for the
    histogram modes ``K x (2 rmax + 1)`` varint symbol counts (K = 1, or
    :data:`RESIDUAL_CONTEXTS` for modes 6-8), then the range coder's u32 words."""
    # Decoders may differ from the encoder's prediction by a few float32 ulps of the network
    # output (threads, batch sizes, devices); that drift scales with |pred|, not only |x|.
    # Float outputs are also rounded to the array's dtype (float16 ulps are coarse).
    eps = float(np.finfo(np.float32).eps)
    scale_ref = max(
        float(np.abs(x[np.isfinite(x)]).max(initial=0.0)),
        float(np.abs(pred[np.isfinite(pred)]).max(initial=0.0)),
    )
    margin = max(bound * BOUND_MARGIN, 4 * eps * scale_ref)
    if dtype.kind == "f" and dtype.itemsize < 4:
        margin += 0.5 * float(np.finfo(dtype).eps) * scale_ref  # half an ulp of the output
    if dtype.kind in "iu":
        # Integer outputs are rounded: any value within floor(bound) + 0.5 (exclusive) of the
        # input rounds to within floor(bound). Keep a drift margin below that threshold.
        int_margin = max(1.0 / 32.0, 4 * eps * scale_ref)
        half = math.floor(max(bound, 0.0)) + 0.5 - int_margin
    else:
        half = bound - margin
    if half <= 0:
        raise ValueError(
            f"max_abs_error {bound:g} is below the precision coinpp can guarantee for these "
            f"{np.dtype(dtype)} values (values and model predictions up to {scale_ref:.3g}); "
            "store this array losslessly instead"
        )
    width = 2.0 * half
    r = np.where(valid, x - pred, 0.0)
    q = np.rint(r / width).astype(np.int64)
    if int(np.abs(q).max(initial=0)) > MAX_RESIDUAL_SYMBOL:
        raise ValueError(
            f"max_abs_error {bound:g} is too small for this data (residual needs more than "
            f"{MAX_RESIDUAL_SYMBOL} levels); raise the bound or store this array losslessly"
        )
    # The residual of a neural fit stays spatially correlated: code the cheapest of the plain
    # symbols and their differences along the last spatial axis or both last two (Lorenzo),
    # each under one quantized Laplace, under the chunk's own symbol histogram, or under one
    # histogram per row-above context (both stored in the section; far cheaper for sparse
    # residuals, where a Laplace fits badly and nonzero symbols cluster).
    n_transforms = len(RESIDUAL_TRANSFORMS)
    candidates = [_residual_transform(q, mode) for mode in range(n_transforms)]
    costs = ([_laplace_bits(d) for d in candidates] + [_histogram_bits(d, False) for d in candidates]
             + [_histogram_bits(d, True) for d in candidates])
    mode = int(np.argmin(costs))
    d = candidates[mode % n_transforms]
    rmax = int(np.abs(d).max(initial=0))
    scale = _laplace_scale(d)
    head = bitstream._varint(rmax) + struct.pack("<Bdf", mode, width, scale)
    if rmax == 0:
        return head
    symbols = d.reshape(-1).astype(np.int32)
    enc = constriction.stream.queue.RangeEncoder()
    if mode < n_transforms:
        family = constriction.stream.model.QuantizedLaplace(-rmax, rmax + 1)
        enc.encode(symbols, family, np.zeros(d.size), np.full(d.size, np.float32(scale), np.float64))
        return head + enc.get_compressed().astype("<u4").tobytes()
    contextual = mode >= 2 * n_transforms
    ctx = _residual_contexts(d, contextual).reshape(-1)
    if contextual:  # row j of every item, then row j + 1: the decoder's order (one call per row index)
        m, h, w = _rows(d.shape)
        order = np.arange(d.size).reshape(m, h, w).transpose(1, 0, 2).reshape(-1)
        symbols, ctx = symbols[order], ctx[order]
    counts = _histogram_counts(symbols, ctx, RESIDUAL_CONTEXTS if contextual else 1, rmax)
    probs = _histogram_probs(counts)
    model = constriction.stream.model.Categorical(perfect=False)
    step = max(1, (1 << 16) // counts.shape[1])  # symbols per call: bounded (n, S) probabilities
    for i in range(0, symbols.size, step):
        enc.encode(symbols[i : i + step] + rmax, model, probs[ctx[i : i + step]])
    return (head + b"".join(bitstream._varint(int(c)) for c in counts.reshape(-1))
            + enc.get_compressed().astype("<u4").tobytes())


#: Residual transforms: 0 plain, 1 difference along the last spatial axis, 2 Lorenzo (last two).
RESIDUAL_TRANSFORMS = ("plain", "left", "lorenzo")
#: Residual modes (the section's mode byte): transform ``mode % 3`` coded under a quantized
#: Laplace (modes 0-2), under the chunk's symbol histogram stored in the section (3-5), or
#: under one stored histogram per row-above context (6-8, :func:`_residual_contexts`).
RESIDUAL_MODES = (*RESIDUAL_TRANSFORMS, *(f"{t}, histogram" for t in RESIDUAL_TRANSFORMS),
                  *(f"{t}, context histograms" for t in RESIDUAL_TRANSFORMS))
#: Widest symbol range ``[-r, r]`` coded with histograms (wider: Laplace only).
MAX_HISTOGRAM_SYMBOL = 255
#: Row-above contexts of modes 6-8: how many of the three symbols above are nonzero (0-3).
RESIDUAL_CONTEXTS = 4


def _residual_transform(q: np.ndarray, mode: int) -> np.ndarray:
    """``q (B, *S, C)`` int64 -> symbols to code (invertible with exact integer sums)."""
    if mode == 0:
        return q
    d = np.diff(q, axis=-2, prepend=0)
    if mode == 2 and q.ndim >= 4:
        d = np.diff(d, axis=-3, prepend=0)
    return d


def _residual_inverse(d: np.ndarray, mode: int) -> np.ndarray:
    if mode == 0:
        return d
    q = np.cumsum(d, axis=-2)
    if mode == 2 and d.ndim >= 4:
        q = np.cumsum(q, axis=-3)
    return q


def _laplace_scale(d: np.ndarray) -> float:
    return float(np.float32(max(np.abs(d).mean(), 0.05)))


def _laplace_bits(d: np.ndarray) -> float:
    """Ideal code length (bits) of integer symbols under a zero-mean quantized Laplace."""
    b = _laplace_scale(d)
    a = np.abs(d).astype(np.float64)
    # P(0) = 1 - e^{-1/(2b)}; P(k) = e^{-|k|/b} sinh(1/(2b)) for k != 0
    p0 = -np.expm1(-0.5 / b)
    pk = np.exp(-a / b) * np.sinh(0.5 / b)
    p = np.where(a == 0, p0, pk)
    return float(-np.log2(np.maximum(p, 1e-300)).sum())


def _rows(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``(B, *S, C)`` -> ``(items, rows, row length)``: rows run along the last spatial axis
    (with the channels), stacked along the one before it (1 row for 1-D items)."""
    w = shape[-2] * shape[-1]
    h = shape[-3] if len(shape) >= 4 else 1
    return math.prod(shape) // (h * w), h, w


def _row_context(prev: np.ndarray) -> np.ndarray:
    """Symbols of the rows above ``(..., w)`` -> how many of the three above each point are
    nonzero ``(..., w)`` in 0-3."""
    nz = np.pad(prev != 0, [(0, 0)] * (prev.ndim - 1) + [(1, 1)]).astype(np.int64)
    return nz[..., :-2] + nz[..., 1:-1] + nz[..., 2:]


def _residual_contexts(d: np.ndarray, contextual: bool) -> np.ndarray:
    """Context of every symbol of ``d (B, *S, C)`` (same shape): 0 for the single-histogram
    modes; the row-above count of nonzero symbols (0 in each item's first row) otherwise."""
    if not contextual:
        return np.zeros(d.shape, np.int64)
    m, h, w = _rows(d.shape)
    v = d.reshape(m, h, w)
    ctx = np.zeros((m, h, w), np.int64)
    ctx[:, 1:] = _row_context(v[:, :-1])
    return ctx.reshape(d.shape)


def _histogram_counts(symbols: np.ndarray, ctx: np.ndarray, n_ctx: int, rmax: int) -> np.ndarray:
    """Symbols in ``[-rmax, rmax]`` and their contexts (both ``(n,)``) -> counts ``(n_ctx, 2 rmax + 1)``."""
    s = 2 * rmax + 1
    return np.bincount(ctx * s + symbols + rmax, minlength=n_ctx * s).reshape(n_ctx, s)


def _histogram_probs(counts: np.ndarray) -> np.ndarray:
    """Per-context symbol counts ``(K, S)`` -> probabilities (uniform for an unused context)."""
    total = counts.sum(axis=1, keepdims=True)
    return np.where(total > 0, counts / np.maximum(total, 1), 1.0 / counts.shape[1])


def _histogram_bits(d: np.ndarray, contextual: bool) -> float:
    """Code length (bits) of integer symbols under their own histogram (one per row-above
    context if ``contextual``), including the histograms' varint counts (inf beyond
    :data:`MAX_HISTOGRAM_SYMBOL`)."""
    rmax = int(np.abs(d).max(initial=0))
    if rmax > MAX_HISTOGRAM_SYMBOL:
        return math.inf
    counts = _histogram_counts(d.reshape(-1), _residual_contexts(d, contextual).reshape(-1),
                               RESIDUAL_CONTEXTS if contextual else 1, rmax)
    total = np.broadcast_to(counts.sum(axis=1, keepdims=True), counts.shape)
    used = counts > 0
    header = sum(len(bitstream._varint(int(c))) for c in counts.reshape(-1))
    return float(-(counts[used] * np.log2(counts[used] / total[used])).sum()) + 8 * header


def _decode_context_rows(dec: Any, probs: np.ndarray, shape: tuple[int, ...], rmax: int) -> np.ndarray:
    """Decode the symbols of modes 6-8, stored row index by row index (row ``j`` of every
    item, then ``j + 1``; each row's contexts come from the row above) -> ``(m, h, w)``
    int64 in ``[-rmax, rmax]``."""
    m, h, w = _rows(shape)
    model = constriction.stream.model.Categorical(perfect=False)
    out = np.zeros((m, h, w), np.int64)
    ctx = np.zeros(m * w, np.int64)
    for j in range(h):
        out[:, j] = (dec.decode(model, probs[ctx]) - rmax).reshape(m, w)
        ctx = _row_context(out[:, j]).reshape(-1)
    return out


def _decode_residual(payload: bytes, shape: tuple[int, ...]) -> np.ndarray:
    r = bitstream._Reader(payload)
    rmax = r.varint("residual range", 4 * MAX_RESIDUAL_SYMBOL)
    mode, width, scale = struct.unpack("<Bdf", r.take(13, "residual parameters"))
    if mode >= len(RESIDUAL_MODES):
        raise BitstreamError(f"unknown residual mode {mode}")
    if not (math.isfinite(width) and width > 0 and math.isfinite(scale) and scale > 0):
        raise BitstreamError("residual section has invalid parameters")
    n = math.prod(shape)
    if rmax == 0:
        return np.zeros(shape)
    n_transforms = len(RESIDUAL_TRANSFORMS)
    counts = None
    if mode >= n_transforms:
        if rmax > MAX_HISTOGRAM_SYMBOL:
            raise BitstreamError(f"residual histogram over {2 * rmax + 1} symbols exceeds the limit")
        n_ctx = RESIDUAL_CONTEXTS if mode >= 2 * n_transforms else 1
        counts = np.array([r.varint("residual histogram", n) for _ in range(n_ctx * (2 * rmax + 1))],
                          np.int64).reshape(n_ctx, 2 * rmax + 1)
        if counts.sum() != n:
            raise BitstreamError(f"residual histogram counts {int(counts.sum())} symbols, the chunk has {n}")
    rest = payload[r.pos :]
    if len(rest) % 4:
        raise BitstreamError("residual payload length is not a multiple of 4 bytes")
    try:
        dec = constriction.stream.queue.RangeDecoder(np.frombuffer(rest, "<u4").astype(np.uint32))
        if counts is None:
            family = constriction.stream.model.QuantizedLaplace(-rmax, rmax + 1)
            d = dec.decode(family, np.zeros(n), np.full(n, np.float32(scale), np.float64))
        elif counts.shape[0] == 1:  # the encoder's probabilities: _histogram_probs(counts)[0]
            d = dec.decode(constriction.stream.model.Categorical(_histogram_probs(counts)[0], perfect=False), n) - rmax
        else:
            d = _decode_context_rows(dec, _histogram_probs(counts), shape, rmax)
    except Exception as exc:
        raise BitstreamError(f"residual payload cannot be decoded: {exc}") from exc
    q = _residual_inverse(np.asarray(d, np.int64).reshape(shape), mode % len(RESIDUAL_TRANSFORMS))
    return q.astype(np.float64) * width
