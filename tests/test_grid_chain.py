"""The latent-grid model chain as one library call (:mod:`coinpp_pipeline.grid_chain`), on
real ERA5 fields at 4° (every 4th point: the poles stay the first and last rows), tiny
settings. ``benchmarks/gpu_chain.sh`` runs the same steps as separate processes; at equal
settings both give the same network, tables and ARM (docs/benchmarks.md, session 29)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import era5

from coinpp_pipeline import Model, checkpoints
from coinpp_pipeline.bitstream import unpack
from coinpp_pipeline.grid_chain import GridChainConfig, make_grid_chain
from coinpp_pipeline.grid_model import GridModel
from coinpp_pipeline.latent_grid import GridConfig

TINY = GridConfig(factors=(2, 4, 8), hidden=8, max_symbol=8, encode_steps=10, encode_lr=0.08)
CHAIN = GridChainConfig(steps=10, basis=3, train_rate_weights=(1.0,), finetune_rate_weights=(1.0,),
                        coder_rate_weights=(0.3, 1.0), chunk_items=3, arm_steps=10, arm_hidden=8,
                        finetune_gaps=(1,), coder_gaps=(1,))


def _fields(days: range) -> np.ndarray:
    return np.concatenate([era5("t2m", d)[:, ::4, ::4] for d in days])


@pytest.fixture(scope="module")
def chain_run() -> tuple[GridModel, list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    model = make_grid_chain(_fields(range(3)), TINY, CHAIN, log=records.append)
    return model, records


def test_chain_makes_a_model_for_chunks_of_its_length(chain_run: tuple[GridModel, list[dict[str, Any]]]) -> None:
    model, records = chain_run
    assert [r["stage"] for r in records if r.get("done")] == ["train", "basis", "finetune", "coders", "final"]
    assert {r["stage"] for r in records if "step" in r} == {"train", "finetune"}
    c = model.config
    assert (c.basis, c.encode_rate, c.predict_previous, c.constant_rows) == (3, "arm", True, (0, 45))
    assert model.arm is not None and model.arm.item_context and len(model.table_sets) == 2
    assert model.chunk_items == 3
    assert model.report["chain"]["chunk_items"] == 3 and model.report["arm"]["chunk_items"] == 3
    again = Model.from_bytes(model.to_bytes())
    assert isinstance(again, GridModel) and again.chunk_items == 3 and again.sha256 == model.sha256


def test_chain_model_codes_a_held_out_chunk(chain_run: tuple[GridModel, list[dict[str, Any]]]) -> None:
    """Three held-out fields (the fourth day) as one chunk: the chunk carries the predictor's
    coefficients (Q) and the stored poles (O); with an error bound every value comes back
    within it; without, the decoded chunk is closer than the model's climatology alone."""
    model, _ = chain_run
    chunk = _fields(range(3, 4))[:3]
    blob = model.encode(chunk, rate_weight=0.3)
    assert {"Q", "O"} <= set(unpack(blob).sections)
    out = model.decode(blob)
    assert out.shape == chunk.shape
    rmse = float(np.sqrt(np.mean((out - chunk) ** 2)))
    clim = float(np.sqrt(np.mean((model.mean - chunk) ** 2)))
    assert rmse < 0.9 * clim, (rmse, clim)  # 2.84 K against 3.85 K here
    bounded = model.decode(model.encode(chunk, max_abs_error=0.5))
    assert np.abs(bounded - chunk).max() <= 0.5


def test_chain_refuses_settings_it_cannot_meet() -> None:
    fields = _fields(range(1))  # 4 fields
    with pytest.raises(ValueError, match="chunk_items=7"):
        make_grid_chain(fields, TINY, GridChainConfig(chunk_items=7))
    with pytest.raises(ValueError, match="basis of 16 components"):
        make_grid_chain(fields, TINY, GridChainConfig(chunk_items=2))
    with pytest.raises(ValueError, match="climatology"):
        make_grid_chain(fields, GridConfig(climatology=False), GridChainConfig(chunk_items=2, basis=2))
    with pytest.raises(ValueError, match=r"unknown chain setting\(s\) \['chunk'\]"):
        GridChainConfig.from_dict({"chunk": 7})
    with pytest.raises(ValueError, match="steps must be >= 1"):
        GridChainConfig(steps=0)
    with pytest.raises(ValueError, match="coder_rate_weights"):
        GridChainConfig(coder_rate_weights=())
    assert GridChainConfig.from_dict({"coder_rate_weights": [0.3, 1]}).coder_rate_weights == (0.3, 1)


def test_interrupted_chain_resumes_from_its_last_stage(chain_run: tuple[GridModel, list[dict[str, Any]]],
                                                       tmp_path: Path) -> None:
    """An exception in the fine-tuning stage (from the log callback) leaves the train and basis
    checkpoints; the rerun starts after them and ends with the uninterrupted run's model, bit
    for bit. A run with other settings does not take them."""
    ref, _ = chain_run
    prefix = str(tmp_path / "t2m.chain")

    class Stop(Exception):
        pass

    def stop_in_finetune(r: dict[str, Any]) -> None:
        if r["stage"] == "finetune":
            raise Stop

    with pytest.raises(Stop):
        make_grid_chain(_fields(range(3)), TINY, CHAIN, log=stop_in_finetune, checkpoint=prefix)
    assert sorted(p.name.split("-", 2)[2] for p in tmp_path.glob("*.ckpt")) == ["0-train.ckpt", "1-basis.ckpt"]
    seen: list[dict[str, Any]] = []
    resumed = make_grid_chain(_fields(range(3)), TINY, CHAIN, log=seen.append, checkpoint=prefix)
    assert [(r["stage"], bool(r.get("resumed"))) for r in seen if r.get("done")] == [
        ("basis", True), ("finetune", False), ("coders", False), ("final", False)]
    assert not any(r["stage"] == "train" for r in seen)
    _assert_same_model(resumed, ref)
    other: list[dict[str, Any]] = []
    longer = make_grid_chain(_fields(range(3)), TINY, dataclasses.replace(CHAIN, arm_steps=11), log=other.append,
                             checkpoint=prefix)
    assert not any(r.get("resumed") for r in other)
    assert any(k.startswith("entropy.arm") for k in checkpoints.differences(longer.to_bytes(), ref.to_bytes()))


def _assert_same_model(a: GridModel, b: GridModel) -> None:
    """Same configuration, network, tables, ARM and mean field (reports hold wall times)."""
    assert checkpoints.differences(a.to_bytes(), b.to_bytes()) == []
