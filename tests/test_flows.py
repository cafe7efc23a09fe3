"""Prefect flows (issue #4): ``compress-archive`` (with its ``encode-regions`` subflow and
``write-region`` tasks) and ``meta-train``, run in-process against ONE temporary Prefect
server (``prefect_test_harness``, module-scoped so the other test modules never see it).

Stores are written from 2-3 real ERA5 files with the session's tiny model (``codec_model``
in conftest) and always decoded back through xarray, so every test checks what a reader gets.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import ERA5_FILES, REPO

sys.path.insert(0, str(REPO))  # ``flows`` is a top-level directory of the checkout

BOUND = 0.5  # K: max_abs_error given to the codec; every decoded value must be within it


@pytest.fixture(scope="module", autouse=True)
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One temporary Prefect server (SQLite in a temp PREFECT_HOME) for this module only."""
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        mp.setenv("PREFECT_HOME", str(home))
        with prefect_test_harness(server_startup_timeout=120):
            yield
    from coinpp_pipeline import resolve

    resolve.forget_models()  # the flows allowed their model URLs in this process: undo
    resolve.disallow_model_urls()


@pytest.fixture(scope="module")
def model_url(codec_model, codec_model_dir: Path) -> str:
    return str(codec_model_dir / f"{codec_model.sha256}.coinpp")


def _compress(model_url: str, sources: list[str], target: Path | str, **kw: Any) -> Any:
    from flows.compress_archive import compress_archive

    params: dict[str, Any] = {"variables": ["t2m"], "max_abs_error": BOUND, "region_chunks": 2}
    return compress_archive(source=[str(s) for s in sources], target=str(target), model=model_url,
                            **(params | kw))


def _source(files: list[str], var: str = "t2m") -> xr.Dataset:
    return xr.concat([xr.open_dataset(f)[[var]].load() for f in files], dim="time")


def _open(target: Path, zarr_format: int = 3) -> xr.Dataset:
    return xr.open_zarr(str(target), consolidated=zarr_format == 2)


def _snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``root``: (size, mtime_ns, sha256 of the bytes)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def _flags(target: Path) -> np.ndarray:
    return np.asarray(zarr.open_array(str(target), path="_coinpp/done_t2m", mode="r")[:])


def _chunk_key(t: int, zarr_format: int) -> str:
    return f"t2m/c/{t}/0/0" if zarr_format == 3 else f"t2m/{t}.0.0"


def _check_store(target: Path, files: list[str], zarr_format: int, sha: str) -> xr.Dataset:
    """Values within BOUND, coordinates/attributes of the sources, provenance attributes."""
    import coinpp_pipeline

    src = _source(files)
    with _open(target, zarr_format) as ds:
        ds = ds.load()
    dec, ref = ds["t2m"].values, src["t2m"].values
    assert dec.shape == ref.shape and dec.dtype == ref.dtype
    err = np.abs(dec.astype(np.float64) - ref.astype(np.float64))
    assert np.isfinite(dec).all()
    assert err.max() <= BOUND, f"max |decoded - source| = {err.max()} > {BOUND}"
    for c in ("time", "latitude", "longitude"):
        np.testing.assert_array_equal(ds[c].values, src[c].values)
        assert ds[c].attrs == src[c].attrs
    assert ds["t2m"].attrs == src["t2m"].attrs
    with xr.open_dataset(files[0]) as first:
        for k, v in first.attrs.items():
            assert ds.attrs[k] == v
    prov = ds.attrs["coinpp"]
    assert prov["package_version"] == coinpp_pipeline.__version__
    assert prov["models"]["t2m"]["sha256"] == sha
    assert prov["sources"] == [str(f) for f in files]
    assert prov["codec"]["max_abs_error"] == BOUND
    # the array's codec configuration names the model too (readers resolve it by hash)
    meta = zarr.open_group(str(target), mode="r")["t2m"].metadata.to_dict()
    assert sha in repr(meta)
    return ds


# ------------------------------------------------------------------------------ compress-archive
@pytest.mark.parametrize("zarr_format", [3, 2])
def test_compress_archive_roundtrip_and_rerun(model_url: str, codec_model, tmp_path: Path, zarr_format: int) -> None:
    files = ERA5_FILES[:2]
    target = tmp_path / "era5.zarr"
    out = _compress(model_url, files, target, zarr_format=zarr_format)
    assert out["items"] == 7 and out["regions_written"] == 4  # ceil(7 / 2)
    assert out["models"] == {"t2m": codec_model.sha256}
    stats = out["stats"]["t2m"]
    assert 0 < stats["max_abs_error"] <= BOUND and stats["stored_bytes"] > 0 and stats["ratio"] > 1
    _check_store(target, files, zarr_format, codec_model.sha256)
    np.testing.assert_array_equal(_flags(target), [3, 3, 3, 2])  # 1 + items per region

    before = _snapshot(target / "t2m")
    again = _compress(model_url, files, target, zarr_format=zarr_format)
    assert again["regions_written"] == 0 and again["items"] == 7
    assert _snapshot(target / "t2m") == before  # no chunk touched
    _check_store(target, files, zarr_format, codec_model.sha256)


def _append_and_compare(model_url: str, sha: str, tmp_path: Path, zarr_format: int, kw: dict[str, Any],
                        flags_before: list[int], regions_appended: int, old_chunks: int,
                        flags_after: list[int]) -> None:
    """Write 2 files (7 items), append a third (10): the region flags, the regions rewritten,
    the first ``old_chunks`` chunk objects untouched (bytes and mtime), and every chunk equal
    to a store written at once (deterministic encoding)."""
    grown = tmp_path / "grown.zarr"
    _compress(model_url, ERA5_FILES[:2], grown, zarr_format=zarr_format, **kw)
    np.testing.assert_array_equal(_flags(grown), flags_before)
    old = _snapshot(grown)
    out = _compress(model_url, ERA5_FILES[:3], grown, zarr_format=zarr_format, **kw)
    assert out["items"] == 10 and out["regions_written"] == regions_appended
    new = _snapshot(grown)
    for t in range(old_chunks):
        key = _chunk_key(t, zarr_format)
        assert key in old and new[key] == old[key], key
    ds = _check_store(grown, ERA5_FILES[:3], zarr_format, sha)
    np.testing.assert_array_equal(_flags(grown), flags_after)

    once = tmp_path / "once.zarr"
    assert _compress(model_url, ERA5_FILES[:3], once, zarr_format=zarr_format, **kw)["regions_written"] == len(flags_after)
    with _open(once, zarr_format) as ref:
        np.testing.assert_array_equal(ds["t2m"].values, ref["t2m"].values)
        np.testing.assert_array_equal(ds["time"].values, ref["time"].values)
    n_chunks = zarr.open_group(str(once), mode="r")["t2m"].nchunks
    for t in range(n_chunks):
        key = _chunk_key(t, zarr_format)
        assert (grown / key).read_bytes() == (once / key).read_bytes(), key


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_append_new_file_keeps_old_regions(model_url: str, codec_model, tmp_path: Path, zarr_format: int) -> None:
    """One field per chunk, 2 chunks per region: regions 0-2 full, region 3 grows (6-7 -> 6-8),
    region 4 is new."""
    _append_and_compare(model_url, codec_model.sha256, tmp_path, zarr_format, {"region_chunks": 2},
                        flags_before=[3, 3, 3, 2], regions_appended=2, old_chunks=6, flags_after=[3, 3, 3, 3, 3])


def test_append_with_several_fields_per_chunk(model_url: str, codec_model, tmp_path: Path) -> None:
    """``time_chunk=3`` (chunks hold 3 fields, as the time-chunked benchmarks store them):
    chunks 0-1 full, chunk 2 grows (6 -> 6-8) and is re-encoded, chunk 3 is new."""
    _append_and_compare(model_url, codec_model.sha256, tmp_path, 3, {"time_chunk": 3, "region_chunks": 1},
                        flags_before=[4, 4, 2], regions_appended=2, old_chunks=2, flags_after=[4, 4, 4, 2])
    assert zarr.open_group(str(tmp_path / "grown.zarr"), mode="r")["t2m"].chunks[0] == 3


def _failed(state: Any) -> str:
    assert state.is_failed(), state
    return str(state.message) + " " + repr(state.result(raise_on_failure=False))


def test_corrupt_source_fails_naming_the_file(model_url: str, tmp_path: Path) -> None:
    from flows.compress_archive import compress_archive

    bad = tmp_path / "era5_1deg_20260327.nc"
    bad.write_bytes(b"this is not a NetCDF file\n" * 100)
    target = tmp_path / "never.zarr"
    state = compress_archive(source=[ERA5_FILES[0], ERA5_FILES[1], str(bad)], target=str(target),
                             variables=["t2m"], model=model_url, return_state=True)
    msg = _failed(state)
    assert str(bad) in msg and "cannot read source file" in msg
    assert not target.exists()

    # an existing store is left exactly as it was
    store = tmp_path / "kept.zarr"
    _compress(model_url, ERA5_FILES[:2], store)
    before = _snapshot(store)
    state = compress_archive(source=[ERA5_FILES[0], ERA5_FILES[1], str(bad)], target=str(store),
                             variables=["t2m"], model=model_url, return_state=True)
    assert str(bad) in _failed(state)
    assert _snapshot(store) == before


def test_missing_variable_fails_clearly(model_url: str, tmp_path: Path) -> None:
    from flows.compress_archive import compress_archive

    partial = tmp_path / "era5_no_t2m.nc"
    with xr.open_dataset(ERA5_FILES[1]) as ds:
        ds.drop_vars("t2m").to_netcdf(partial, engine="h5netcdf")
    target = tmp_path / "never.zarr"
    state = compress_archive(source=[ERA5_FILES[0], str(partial)], target=str(target),
                             variables=["t2m"], model=model_url, return_state=True)
    msg = _failed(state)
    assert str(partial) in msg and "t2m" in msg and "lacks variable" in msg
    assert not target.exists()


def test_model_hash_mismatch_on_append(model_url: str, codec_model, tmp_path: Path) -> None:
    from coinpp_pipeline import Model
    from flows.compress_archive import compress_archive

    # model B: the same network with another report -> another file, another sha256
    a = codec_model
    b = Model(a.config, a.network, a.mean, a.std, a.quantizer, a.entropy, {**a.report, "note": "model B"})
    b_url = str(tmp_path / f"{b.sha256}.coinpp")
    assert b.save(b_url) != a.sha256
    store = tmp_path / "a.zarr"
    _compress(model_url, ERA5_FILES[:2], store)
    before = _snapshot(store)
    for files in (ERA5_FILES[:2], ERA5_FILES[:3]):  # rerun and append
        state = compress_archive(source=files, target=str(store), variables=["t2m"], model=b_url,
                                 region_chunks=2, return_state=True)
        msg = _failed(state)
        assert a.sha256[:12] in msg and b.sha256[:12] in msg and "model" in msg
        assert _snapshot(store) == before


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_rerun_with_other_chunking_is_refused(model_url: str, codec_model, tmp_path: Path, zarr_format: int) -> None:
    """A store keeps the chunking it was written with: a rerun or append asking for another
    time chunk (its regions would straddle stored chunks) or other regions (the done flags
    are per region) fails naming the store's values, and no chunk or flag changes. Without
    ``time_chunk`` a run takes the store's."""
    from coinpp_pipeline.archive import resolve_time_chunk
    from flows.compress_archive import compress_archive

    store = tmp_path / "a.zarr"
    _compress(model_url, ERA5_FILES[:2], store, zarr_format=zarr_format)  # the patch model: 1 field per chunk
    assert codec_model.chunk_items == 1
    assert zarr.open_group(str(store), mode="r")["t2m"].chunks[0] == 1
    before = _snapshot(store)
    for kw, words in (({"time_chunk": 3, "region_chunks": 2}, ["chunks of 1 item", "time_chunk=3"]),
                      ({"region_chunks": 3}, ["regions of 2 item", "region_chunks=2"])):
        state = compress_archive(source=[str(f) for f in ERA5_FILES[:3]], target=str(store), variables=["t2m"],
                                 model=model_url, max_abs_error=BOUND, zarr_format=zarr_format, return_state=True,
                                 **kw)
        msg = _failed(state)
        assert all(w in msg for w in words), msg
        assert _snapshot(store) == before
    assert resolve_time_chunk(str(store), ["t2m"], None, {"t2m": 7}) == 1  # the store's, not the model's
    assert resolve_time_chunk(str(tmp_path / "new.zarr"), ["t2m"], None, {"t2m": 7}) == 7
    assert resolve_time_chunk(str(tmp_path / "new.zarr"), ["t2m"], 2, {"t2m": 7}) == 2
    with pytest.raises(Exception, match="different chunk lengths"):
        resolve_time_chunk(str(tmp_path / "new.zarr"), ["t2m", "msl"], None, {"t2m": 7, "msl": 1})
    out = _compress(model_url, ERA5_FILES[:3], store, zarr_format=zarr_format)  # the store's settings: it goes on
    assert out["items"] == 10 and out["regions_written"] == 2
    _check_store(store, ERA5_FILES[:3], zarr_format, codec_model.sha256)


def test_dask_runner_matches_threads(model_url: str, tmp_path: Path) -> None:
    pytest.importorskip("prefect_dask")
    files = ERA5_FILES[:2]
    threads, dask_ = tmp_path / "threads.zarr", tmp_path / "dask.zarr"
    _compress(model_url, files, threads, runner="threads")
    out = _compress(model_url, files, dask_, runner="dask", max_workers=2)
    assert out["regions_written"] == 4
    with _open(threads) as a, _open(dask_) as b:
        np.testing.assert_array_equal(a["t2m"].values, b["t2m"].values)
    np.testing.assert_array_equal(_flags(dask_), [3, 3, 3, 2])


def test_s3_target_zarr_v2(model_url: str, codec_model, s3_server: dict[str, str]) -> None:
    """A store on S3 (moto): storage_options reach every step, v2 metadata is consolidated."""
    target = "s3://coinpp-test/flows/era5-v2.zarr"
    out = _compress(model_url, ERA5_FILES[:2], target, zarr_format=2, storage_options=s3_server)
    assert out["regions_written"] == 4 and out["stats"]["t2m"]["stored_bytes"] > 0
    assert _compress(model_url, ERA5_FILES[:2], target, zarr_format=2, storage_options=s3_server)["regions_written"] == 0
    with xr.open_zarr(target, consolidated=True, storage_options=s3_server) as ds:
        ref = _source(ERA5_FILES[:2])["t2m"].values.astype(np.float64)
        assert np.abs(ds["t2m"].values.astype(np.float64) - ref).max() <= BOUND
        assert ds.attrs["coinpp"]["models"]["t2m"]["sha256"] == codec_model.sha256


def test_write_region_task_logic(model_url: str, codec_model, tmp_path: Path) -> None:
    """The task's logic without the engine (``.fn``): one region, flagged only once verified."""
    from coinpp_pipeline.archive import ArchiveJob, plan_archive, prepare_store
    from flows.compress_archive import write_region_task

    job = ArchiveJob(sources=list(ERA5_FILES[:2]), target=str(tmp_path / "s.zarr"), variables=["t2m"],
                     models={"t2m": model_url}, model_hashes={"t2m": codec_model.sha256},
                     region_chunks=3, max_abs_error=BOUND)
    pending = prepare_store(plan_archive(job))
    assert [(r.start, r.stop) for r in pending] == [(0, 3), (3, 6), (6, 7)]
    res = write_region_task.fn(job, pending[1], True)
    assert (res.var, res.index, res.items) == ("t2m", 1, 3)
    assert 0 < res.max_abs_error <= BOUND and res.count == 3 * 181 * 360
    assert [(r.start, r.stop) for r in prepare_store(job)] == [(0, 3), (6, 7)]


# ------------------------------------------------------------------------------ meta-train
TINY_ARCH: dict[str, Any] = {"grid": "latlon", "patch_shape": [16, 16], "coords": "both", "depth": 3, "width": 32,
             "latent_dim": 8}


def test_meta_train_library_resumes_bit_exactly(tmp_path: Path) -> None:
    """Interrupt training (an exception from the callback), resume from the checkpoint: the
    weights equal those of an uninterrupted run, bit for bit."""
    import torch
    from helpers import training_data

    from coinpp_pipeline import ModelConfig, TrainConfig, meta_train

    data = training_data("era5-latlon")
    cfg = ModelConfig(**{**TINY_ARCH, "patch_shape": (16, 16), "lon_bounds": (0.0, 356.0)})
    train = TrainConfig(steps=12, batch_size=8, outer_lr=3e-3, first_order=True, val_every=3,
                        val_fraction=0.25, seed=0)
    ref = meta_train(data, cfg, train)

    class Stop(Exception):
        pass

    def stop_at_9(step: int, metrics: dict[str, float]) -> None:
        if step == 9:
            raise Stop

    ckpt = str(tmp_path / "run.ckpt")
    with pytest.raises(Stop):
        meta_train(data, cfg, train, callback=stop_at_9, checkpoint_url=ckpt, checkpoint_every=3)
    assert os.path.exists(ckpt)
    seen: list[int] = []
    resumed = meta_train(data, cfg, train, callback=lambda s, m: seen.append(s), checkpoint_url=ckpt,
                         checkpoint_every=3)
    assert seen == [9, 12]  # resumed after the step-6 checkpoint
    for (ka, va), (kb, vb) in zip(ref.network.state_dict().items(), resumed.network.state_dict().items(), strict=True):
        assert ka == kb
        torch.testing.assert_close(va, vb, rtol=0, atol=0)
    assert resumed.sha256 == ref.sha256


def test_meta_train_flow_names_model_by_hash_and_resumes(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from coinpp_pipeline import Model
    from flows.meta_train import meta_train_flow

    out_dir = tmp_path / "models"
    kw: dict[str, Any] = {"source": ERA5_FILES[0], "variable": "t2m", "output": f"{out_dir}/",
                          "architecture": TINY_ARCH, "steps": 4, "batch_size": 8, "checkpoint_every": 2,
                          "max_items": 4}
    first = meta_train_flow(**kw)
    sha = first["sha256"]
    path = out_dir / f"{sha}.coinpp"
    assert first["url"] == str(path) and path.is_file()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
    assert Model.load(str(path), sha256=sha).config.depth == 3
    assert (out_dir / "t2m.ckpt").exists()

    # a second run with the same output finds the finished checkpoint: no training, same model
    ckpt_mtime = (out_dir / "t2m.ckpt").stat().st_mtime_ns
    second = meta_train_flow(**kw)
    assert second["sha256"] == sha and second["url"] == str(path)
    assert (out_dir / "t2m.ckpt").stat().st_mtime_ns == ckpt_mtime
    assert sorted(p.name for p in out_dir.glob("*.coinpp")) == [f"{sha}.coinpp"]

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["meta-train-t2m-history", "meta-train-t2m-report"])))
    kinds = {a.key: a.type for a in arts}
    assert kinds == {"meta-train-t2m-history": "table", "meta-train-t2m-report": "markdown"}
    report = next(a for a in arts if a.key == "meta-train-t2m-report")
    assert sha[:12] in str(report.data)


def test_grid_model_kind_through_both_flows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """compress-archive with model_kind="grid": the meta-train subflow trains a latent-grid
    model, the store records rate_weight and residual_bpv (the SPERR hybrid layer) in its codec
    and provenance, and readers get values within the bound; a region's chunks reach the
    model's encoder as one batch."""
    files = ERA5_FILES[:2]
    target = tmp_path / "grid.zarr"
    from coinpp_pipeline import zarr_codec
    from flows.compress_archive import compress_archive

    batches: list[int] = []
    encode_arrays = zarr_codec.encode_arrays

    def spy(model: Any, arrs: list[np.ndarray], *a: Any) -> list[bytes]:
        batches.append(len(arrs))
        return encode_arrays(model, arrs, *a)

    monkeypatch.setattr(zarr_codec, "encode_arrays", spy)
    batch_size = zarr.config.get("codec_pipeline.batch_size")

    arch = {"factors": [2, 4, 8], "hidden": 8, "max_symbol": 8, "encode_steps": 20}
    stats = compress_archive(source=[str(f) for f in files], target=str(target), variables=["t2m"],
                             model_kind="grid", architecture=arch, train_steps=20, rate_weight=3.0,
                             residual_bpv=1.0, max_abs_error=BOUND, region_chunks=4)
    assert stats["stats"]["t2m"]["ratio"] > 1
    codec = zarr.open_array(str(target), path="t2m").metadata.to_dict()["codecs"][0]["configuration"]
    assert codec["rate_weight"] == 3.0 and codec["residual_bpv"] == 1.0
    assert zarr.open_group(str(target)).attrs["coinpp"]["codec"]["residual_bpv"] == 1.0
    from coinpp_pipeline.bitstream import unpack

    chunk = next(p for p in (target / "t2m" / "c").rglob("*") if p.is_file())
    assert "S" in unpack(chunk.read_bytes()).sections
    from coinpp_pipeline import Model
    from coinpp_pipeline.grid_model import GridModel

    model_files = list((tmp_path / "grid.zarr.models").glob("*.coinpp"))
    assert len(model_files) == 1 and isinstance(Model.load(str(model_files[0])), GridModel)
    got = _open(target)["t2m"].values
    want = _source([str(f) for f in files])["t2m"].values
    assert got.shape == want.shape and np.abs(got - want).max() <= BOUND
    assert max(batches) == 4 and sum(batches) == want.shape[0], batches  # one field per chunk
    assert zarr.config.get("codec_pipeline.batch_size") == batch_size  # zarr's setting restored


def test_grid_chain_model_chunks_the_store_by_default(tmp_path: Path) -> None:
    """compress-archive with model_kind="grid-chain": the meta-train subflow runs the whole
    chain (library ``make_grid_chain``), the model is made for chunks of 3 fields, so the store
    is chunked by 3 along time without being told; values come back within the bound, each
    chunk carries the previous-field predictor (Q) and the poles (O)."""
    from coinpp_pipeline import Model
    from coinpp_pipeline.bitstream import unpack
    from coinpp_pipeline.grid_model import GridModel
    from flows.compress_archive import compress_archive
    from flows.meta_train import meta_train_flow

    files = [str(f) for f in ERA5_FILES[:2]]  # 7 items
    target = tmp_path / "chain.zarr"
    arch = {"factors": [2, 4, 8], "hidden": 8, "max_symbol": 8, "encode_steps": 10}
    chain = {"basis": 2, "chunk_items": 3, "arm_steps": 10, "arm_hidden": 8, "train_rate_weights": [1.0],
             "finetune_rate_weights": [1.0], "coder_rate_weights": [1.0], "finetune_gaps": [1], "coder_gaps": [1]}
    out = compress_archive(source=files, target=str(target), variables=["t2m"], model_kind="grid-chain",
                           architecture=arch, chain=chain, train_steps=10, rate_weight=1.0, max_abs_error=BOUND,
                           region_chunks=1)
    assert out["items"] == 7 and out["regions_written"] == 3
    (model_file,) = (tmp_path / "chain.zarr.models").glob("*.coinpp")
    stages = sorted(p.name.split("-", 2)[2] for p in (tmp_path / "chain.zarr.models").glob("t2m.chain-*.ckpt"))
    assert stages == ["0-train.ckpt", "1-basis.ckpt", "2-finetune.ckpt", "3-coders.ckpt"]  # a rerun resumes
    model = Model.load(str(model_file))
    assert isinstance(model, GridModel) and model.chunk_items == 3 and model.config.predict_previous
    assert model.report["chain"]["steps"] == 10 and model.report["chain"]["basis"] == 2
    assert zarr.open_group(str(target), mode="r")["t2m"].chunks == (3, 181, 360)
    got, want = _open(target)["t2m"].values, _source(files)["t2m"].values
    assert got.shape == want.shape and np.abs(got - want).max() <= BOUND
    full = unpack((target / "t2m" / "c" / "0" / "0" / "0").read_bytes())
    assert {"Q", "O"} <= set(full.sections)
    # asked for one field per chunk: done, with a warning in the run's log that the model codes them less well
    warnings: list[str] = []
    spy = logging.Handler(logging.WARNING)
    spy.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    run_log = logging.getLogger("prefect.flow_runs")
    run_log.addHandler(spy)
    try:
        one = tmp_path / "one.zarr"
        compress_archive(source=files, target=str(one), variables=["t2m"], model=str(model_file), time_chunk=1,
                         rate_weight=1.0, max_abs_error=BOUND)
    finally:
        run_log.removeHandler(spy)
    assert zarr.open_group(str(one), mode="r")["t2m"].chunks == (1, 181, 360)
    assert any("made for chunks of 3 item(s), the store's hold 1" in w for w in warnings), warnings
    with pytest.raises(ValueError, match="kind='grid-chain'"):
        meta_train_flow(source=files, variable="t2m", output=f"{tmp_path}/m/", kind="grid", chain={"basis": 2})
    with pytest.raises(ValueError, match="flow's own parameters"):
        meta_train_flow(source=files, variable="t2m", output=f"{tmp_path}/m/", kind="grid-chain", chain={"steps": 9})


def test_overlapping_region_writes_restore_zarrs_batch_size() -> None:
    """Region tasks overlap in threads: the batch size holds until the last one finishes, then
    zarr's previous setting comes back."""
    from coinpp_pipeline.archive import _chunk_batches

    before = zarr.config.get("codec_pipeline.batch_size")
    first, second = _chunk_batches(4), _chunk_batches(4)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert zarr.config.get("codec_pipeline.batch_size") == 4
    second.__exit__(None, None, None)
    assert zarr.config.get("codec_pipeline.batch_size") == before
