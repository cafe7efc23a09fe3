"""The latent-grid model chain: how the benchmarks' models are made, as one library call.

:func:`make_grid_chain` runs, on training fields ``data (N, H, W)`` in archive order:

1. **training** (:func:`~coinpp_pipeline.grid_model.train_grid_model`): synthesis network,
   rate proxy and the training fields' latents, jointly;
2. **basis** (:func:`~coinpp_pipeline.grid_model.fit_basis`): the training anomalies' top
   ``basis`` principal components join the synthesis;
3. **fine-tuning** (:func:`~coinpp_pipeline.grid_model.finetune_for_basis`): the synthesis
   learns what a held-out field leaves after the basis;
4. **coders** (:func:`~coinpp_pipeline.grid_model.fit_coders`): entropy tables per rate
   weight and a learned autoregressive coder (ARM) that sees each field's predecessor in
   chunks of ``chunk_items`` fields;
5. **final**: the encoder optimises the ARM's rate, each field is also predicted from the
   previous one's decoded output, and rows constant in every training field (the poles)
   are stored rather than synthesised.

With ``checkpoint`` (a URL prefix) each stage's model is written as it finishes
(``<checkpoint>-<key>-<n>-<stage>.ckpt``, ``key`` from the training data and settings); a run
that finds them starts after the last one. Stages are deterministic and their models
round-trip exactly, so a resumed chain gives the same model as an uninterrupted one.

The result is a model made for chunks of ``chunk_items`` consecutive fields
(:attr:`~coinpp_pipeline.grid_model.GridModel.chunk_items`); ``compress-archive`` chunks
with it by default. ``benchmarks/gpu_chain.sh`` runs the same steps as separate processes
and times each; with the same settings both give the same network, tables and ARM.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import checkpoints
from .grid_model import (
    GridModel,
    GridTrainConfig,
    detect_constant_rows,
    finetune_for_basis,
    fit_basis,
    fit_coders,
    train_grid_model,
)
from .latent_grid import GridConfig
from .model import check_rate_weight

#: Encoding defaults of the chain's models (``GridConfig`` fields): what the benchmarks use.
CHAIN_ENCODING: dict[str, Any] = {"encode_steps": 400, "encode_lr": 0.08}


@dataclass(frozen=True)
class GridChainConfig:
    """The chain's settings (defaults: the ERA5 recipe of ``benchmarks/gpu_chain.sh``).

    * ``steps``: training steps, and again fine-tuning steps.
    * ``basis``: principal components of the training anomalies (0: no basis, no fine-tuning).
    * ``train_rate_weights``, ``finetune_rate_weights``: rate weights in the training and
      fine-tuning loops; ``coder_rate_weights``: one entropy-table set per weight, and the
      ARM's training latents — the range of rate weights the model codes well.
    * ``chunk_items``: fields per chunk the ARM learns to code (each sees its predecessor);
      1 = fields coded on their own.
    * ``predict_previous``, ``constant_rows``: the final step's two options.
    * ``finetune_gaps``, ``coder_gaps``: the cross-fitting gaps of fine-tuning and coders.
    """

    steps: int = 3000
    basis: int = 16
    train_rate_weights: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0, 30.0)
    finetune_rate_weights: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0)
    coder_rate_weights: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)
    chunk_items: int = 7
    arm_steps: int = 3000
    arm_hidden: int = 24
    predict_previous: bool = True
    constant_rows: bool = True
    batch: int = 6
    lr: float = 3e-3
    finetune_lr: float = 1e-3
    latent_lr: float = 3e-2
    ste_fraction: float = 0.0
    sga_fraction: float = 0.3
    finetune_gaps: tuple[int, ...] = (2, 6)
    coder_gaps: tuple[int, ...] = (6,)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "arm_steps", "batch", "chunk_items", "arm_hidden"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"GridChainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.basis < 0:
            raise ValueError(f"GridChainConfig.basis must be >= 0, got {self.basis}")
        for name in ("train_rate_weights", "finetune_rate_weights", "coder_rate_weights"):
            weights = getattr(self, name)
            if not weights:
                raise ValueError(f"GridChainConfig.{name} needs at least one rate weight")
            for lam in weights:
                check_rate_weight(lam, f"GridChainConfig.{name}")
        for name in ("finetune_gaps", "coder_gaps"):
            if not getattr(self, name) or min(getattr(self, name)) < 0:
                raise ValueError(f"GridChainConfig.{name} needs gaps >= 0, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> GridChainConfig:
        """From plain JSON (lists for tuples); unknown keys are an error naming them."""
        d = dict(d or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown chain setting(s) {unknown}; known: {sorted(names)}")
        kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The chain's stages, in order; all but ``final`` are checkpointed.
STAGES = ("train", "basis", "finetune", "coders", "final")


def make_grid_chain(data: np.ndarray, config: GridConfig | None = None, chain: GridChainConfig | None = None, *,
                    device: str | None = None, log: Callable[[dict[str, Any]], None] | None = None,
                    checkpoint: str | None = None, storage_options: dict[str, Any] | None = None) -> GridModel:
    """The chain's model for training fields ``data (N, H, W)`` (archive order; NaN =
    missing). ``config``: the architecture (default ``GridConfig`` with
    :data:`CHAIN_ENCODING`; needs a climatology when ``chain.basis`` > 0); ``device``:
    where training and fitting run (cuda when present). ``log`` receives each stage's
    progress records with ``"stage"`` added (``train``, ``finetune``, ``coders``) and one
    ``{"stage": name, "done": True}`` per finished stage (``"resumed": True`` for the stage a
    checkpoint gave). ``checkpoint``: URL prefix of the stage checkpoints (module docstring;
    ``storage_options`` for its filesystem). The model's report holds the chain's settings
    (``report["chain"]``)."""
    chain = chain or GridChainConfig()
    config = config or GridConfig(**CHAIN_ENCODING)
    x = np.asarray(data)
    if x.ndim < 3:
        raise ValueError(f"training data must be (N, H, W) fields, got shape {x.shape}")
    x = x.reshape(-1, *x.shape[-2:])
    n = x.shape[0]
    if chain.chunk_items > n:
        raise ValueError(f"chunk_items={chain.chunk_items}: the ARM learns from runs of that many consecutive "
                         f"training fields, but there are {n}")
    if chain.basis and not config.climatology:
        raise ValueError("a basis needs a model with a climatology (GridConfig.climatology=True); "
                         "set basis=0 for fields without a fixed shape")
    if chain.basis > n:
        raise ValueError(f"a basis of {chain.basis} components needs at least as many training fields; got {n}: "
                         "give more fields or a smaller basis")

    def stage(name: str) -> Callable[[dict[str, Any]], None] | None:
        if log is None:
            return None
        return lambda r: log({"stage": name, **r})

    so = storage_options or {}
    key = hashlib.sha256(np.ascontiguousarray(x).tobytes() + f"{x.shape}{x.dtype}".encode() + json.dumps(
        [config.to_dict(), chain.to_dict()], sort_keys=True, default=str).encode()).hexdigest()[:16]

    def ckpt(name: str) -> str:
        return f"{checkpoint}-{key}-{STAGES.index(name)}-{name}.ckpt"

    def done(name: str, m: GridModel | None = None) -> None:
        if checkpoint is not None and m is not None:
            m.save(ckpt(name), **so)
        if log is not None:
            log({"stage": name, "done": True})

    model: GridModel | None = None
    start = 0  # index in STAGES of the first stage to run

    def todo(name: str) -> bool:
        return start <= STAGES.index(name)
    if checkpoint is not None:
        for i in range(len(STAGES) - 2, -1, -1):
            if checkpoints.exists(ckpt(STAGES[i]), **so):
                loaded = GridModel.load(ckpt(STAGES[i]), **so)
                if not isinstance(loaded, GridModel):
                    raise ValueError(f"chain checkpoint {ckpt(STAGES[i])} is not a grid model")
                model, start = loaded.to(device), i + 1
                if log is not None:
                    log({"stage": STAGES[i], "done": True, "resumed": True})
                break

    common: dict[str, Any] = {"batch": chain.batch, "latent_lr": chain.latent_lr, "seed": chain.seed,
                              "device": device, "ste_fraction": chain.ste_fraction,
                              "sga_fraction": chain.sga_fraction, "log_every": max(chain.steps // 10, 1)}
    if todo("train"):
        train = GridTrainConfig(steps=chain.steps, rate_weights=tuple(chain.train_rate_weights), lr=chain.lr,
                                **common)
        model = train_grid_model(x, config, train, log=stage("train")).to(device)
        done("train", model)
    assert model is not None
    if chain.basis and todo("basis"):
        model = fit_basis(model, x, chain.basis)
        done("basis", model)
    if chain.basis and todo("finetune"):
        tune = GridTrainConfig(steps=chain.steps, rate_weights=tuple(chain.finetune_rate_weights),
                               lr=chain.finetune_lr, **common)
        model = finetune_for_basis(model, x, tune, gaps=chain.finetune_gaps, log=stage("finetune"))
        done("finetune", model)
    if todo("coders"):
        model = fit_coders(model, x, chain.coder_rate_weights, table_sets=True, arm=True,
                           arm_hidden=chain.arm_hidden, arm_steps=chain.arm_steps, arm_chunk_items=chain.chunk_items,
                           cross_fit_gaps=chain.coder_gaps if chain.basis else (0,), log=stage("coders"))
        done("coders", model)
    model = model.with_encoding(encode_rate="arm")
    if chain.predict_previous and chain.chunk_items > 1:
        model = model.with_previous_predictor()
    if chain.constant_rows and config.climatology:
        rows = detect_constant_rows(x)
        if rows:
            model = model.with_constant_rows(rows)
    done("final")
    return model._replace(report=dict(model.report) | {"chain": chain.to_dict()})
