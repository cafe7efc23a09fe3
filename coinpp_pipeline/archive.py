"""Compress an archive (NetCDF / Zarr / NIfTI files) into one COIN++-encoded Zarr store.

The work is split into chunk-aligned *regions* along the item axis (time), so that regions
can be written in parallel by any executor (the Prefect flow uses its task runner):

1. :func:`plan_archive` indexes the sources (metadata only) and :func:`prepare_store` creates
   the store (coordinates, attributes, codec per variable) or extends it along time when the
   archive has grown. It returns the regions not yet done.
2. :func:`write_region` reads one region from the sources, writes it with
   ``xarray.to_zarr(region=...)`` (the codec encodes each chunk), optionally decodes it back
   to verify, and only then sets the region's done-flag. A crash mid-region leaves the flag
   unset, so a rerun rewrites that region (writes are idempotent overwrites of whole chunks).
3. :func:`finalize_store` records provenance (model hashes, package version, source files,
   codec parameters) and returns per-variable statistics.

Done-flags live in the store itself, in the zarr array ``_coinpp/done_<var>`` (one uint32
chunk per region, so concurrent regions never write the same object).
"""

from __future__ import annotations

import contextlib
import math
import posixpath
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, cast

import dask.array as da
import fsspec
import numpy as np
import xarray as xr
import zarr

from . import __version__
from .codec import COINppCodec, grid_options
from .resolve import resolve_model
from .sources import SourceError, index_source, open_source
from .zarr_codec import COINppZarrCodec

PROGRESS_GROUP = "_coinpp"


# ------------------------------------------------------------------------------ planning
@dataclass
class Region:
    """Items ``[start, stop)`` of variable ``var``; ``index`` = region number."""

    var: str
    index: int
    start: int
    stop: int


@dataclass
class ArchiveJob:
    """Everything a region task needs, as plain data (cheap to send to Dask/Prefect workers)."""

    sources: list[str]
    target: str
    variables: list[str]
    models: dict[str, str]  # var -> model URL
    model_hashes: dict[str, str]  # var -> sha256
    time_dim: str = "time"
    time_chunk: int = 1  # items per chunk along time (the flow resolves it: resolve_time_chunk)
    region_chunks: int = 1
    zarr_format: int = 3
    steps: int | None = None
    max_abs_error: float | None = None
    rel_error: float | None = None
    rate_weight: float | None = None  # latent-grid models only
    residual_bpv: float | None = None  # latent-grid models only: the SPERR hybrid layer
    storage_options: dict[str, Any] = field(default_factory=dict)
    source_storage_options: dict[str, Any] = field(default_factory=dict)
    file_times: list[int] = field(default_factory=list)  # items per source file

    @property
    def region_items(self) -> int:
        return self.time_chunk * self.region_chunks

    @property
    def total_items(self) -> int:
        return sum(self.file_times)


def plan_archive(job: ArchiveJob) -> ArchiveJob:
    """Index the sources (metadata and time coordinates only): items per file; check that
    every file has the variables, starting with ``time_dim``, with one item shape. A bad
    file fails here, naming it, before the store is touched."""
    counts: list[int] = []
    all_times: list[np.ndarray] = []
    shapes: dict[str, tuple[int, ...]] = {}
    for url in job.sources:
        times, info = index_source(url, job.variables, job.time_dim, job.source_storage_options)
        for v, (dims, shape) in info.items():
            if not dims or dims[0] != job.time_dim:
                raise SourceError(f"variable {v} in {url} does not start with dimension {job.time_dim!r}")
            if shapes.setdefault(v, shape[1:]) != shape[1:]:
                raise SourceError(f"variable {v} in {url} has item shape {shape[1:]}, unlike {shapes[v]} in the first file")
        counts.append(len(times))
        all_times.append(times)
    job.file_times = counts
    job._times = np.concatenate(all_times)  # type: ignore[attr-defined]
    return job


def _encoding(job: ArchiveJob, var: str, shape: tuple[int, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {"model": job.model_hashes[var], "model_url": job.models[var], "steps": job.steps,
              "max_abs_error": job.max_abs_error, "rel_error": job.rel_error}
    params |= _grid_options(job)
    chunks = (job.time_chunk, *shape[1:])
    if job.zarr_format == 2:
        return {"chunks": chunks, "compressors": [COINppCodec(**params)], "filters": None}
    return {"chunks": chunks, "serializer": COINppZarrCodec(**params), "compressors": None}


def _grid_options(job: ArchiveJob) -> dict[str, float]:
    """The latent-grid codec options the job sets (written into configurations only when set)."""
    return grid_options(rate_weight=job.rate_weight, residual_bpv=job.residual_bpv)


def _read_items(job: ArchiveJob, start: int, stop: int, variables: list[str] | None = None) -> xr.Dataset:
    """Items ``[start, stop)`` of the concatenated sources (reads only the files involved)."""
    parts, offset = [], 0
    for url, n in zip(job.sources, job.file_times, strict=True):
        lo, hi = max(start - offset, 0), min(stop - offset, n)
        if lo < hi:
            parts.append(open_source(url, job.source_storage_options, variables or job.variables,
                                     slice(lo, hi), job.time_dim))
        offset += n
    return xr.concat(parts, dim=job.time_dim) if len(parts) > 1 else parts[0]


def _progress(job: ArchiveJob, mode: Literal["r", "r+", "a"] = "r+") -> zarr.Group:
    # Not from consolidated metadata (v2): it predates the progress group and would hide it.
    root = zarr.open_group(job.target, mode=mode, storage_options=job.storage_options or None,
                           zarr_format=cast(Literal[2, 3], job.zarr_format), use_consolidated=False)
    return root.require_group(PROGRESS_GROUP)


def regions_for(job: ArchiveJob) -> list[Region]:
    n = math.ceil(job.total_items / job.region_items)
    return [Region(v, i, i * job.region_items, min((i + 1) * job.region_items, job.total_items))
            for v in job.variables for i in range(n)]


def _store_exists(job: ArchiveJob) -> bool:
    return _open_store(job.target, job.storage_options) is not None


def _open_store(target: str, storage_options: dict[str, Any]) -> zarr.Group | None:
    try:
        # not from consolidated metadata (v2): it predates the progress group and would hide it
        return zarr.open_group(target, mode="r", storage_options=storage_options or None, use_consolidated=False)
    except FileNotFoundError:
        return None


def store_time_chunks(target: str, variables: list[str], storage_options: dict[str, Any] | None = None,
                      ) -> dict[str, int]:
    """Items per chunk along time of each of ``variables`` the store at ``target`` holds
    (empty: no store)."""
    root = _open_store(target, storage_options or {})
    return _time_chunks(root, variables) if root is not None else {}


def _time_chunks(root: zarr.Group, variables: list[str]) -> dict[str, int]:
    out = {}
    for v in variables:
        node = root.get(v)
        if isinstance(node, zarr.Array) and node.ndim:
            out[v] = int(node.chunks[0])
    return out


def resolve_time_chunk(target: str, variables: list[str], requested: int | None, preferred: dict[str, int],
                       storage_options: dict[str, Any] | None = None) -> int:
    """Items per chunk along time for a run writing ``variables`` to ``target``: an existing
    store's own (a run that asked for another is refused: its regions would straddle the
    stored chunks), else ``requested``, else what the models were made for (``preferred``,
    ``{variable: Model.chunk_items}``; models made for different lengths need ``requested``)."""
    have = store_time_chunks(target, variables, storage_options)
    if have:
        lengths = sorted(set(have.values()))
        if len(lengths) > 1:
            raise SourceError(f"store {target} chunks its variables differently along time ({have}); write "
                              "a new store")
        if requested is not None and requested != lengths[0]:
            raise SourceError(f"store {target} holds chunks of {lengths[0]} item(s) along time; time_chunk="
                              f"{requested} cannot extend it: give time_chunk={lengths[0]} (or leave it unset) "
                              "or write a new store")
        return lengths[0]
    if requested is not None:
        return int(requested)
    lengths = sorted(set(preferred.values()))
    if len(lengths) > 1:
        raise SourceError(f"the models were made for different chunk lengths along time ({preferred}): give "
                          "time_chunk")
    return lengths[0] if lengths else 1


def prepare_store(job: ArchiveJob) -> list[Region]:
    """Create the store (or extend it along time) and return the regions still to write."""
    template_src = _read_items(job, 0, 1)
    kw: dict[str, Any] = {"zarr_format": job.zarr_format, "consolidated": job.zarr_format == 2,
                          "storage_options": job.storage_options or None, "compute": False}
    if not _store_exists(job):
        tmpl = _template(job, template_src, 0, job.total_items)
        enc = {v: _encoding(job, v, tmpl[v].shape) for v in job.variables}
        tmpl.to_zarr(job.target, mode="w-", encoding=enc, **kw)
    else:
        have = xr.open_zarr(job.target, consolidated=job.zarr_format == 2, storage_options=job.storage_options or None)
        n_have = int(have.sizes[job.time_dim])
        missing = [v for v in job.variables if v not in have]
        if missing:
            raise SourceError(f"store {job.target} has no variable(s) {missing}; write a new store")
        for v in job.variables:
            _check_same_model(job, v)
        _check_same_layout(job)
        src_times = _read_times(job)
        if n_have > len(src_times) or not np.array_equal(np.asarray(have[job.time_dim].values), src_times[:n_have]):
            raise SourceError(
                f"store {job.target} holds {n_have} items whose {job.time_dim} values are not the "
                "first items of the sources: the archive changed in the middle; write a new store"
            )
        if len(src_times) > n_have:
            tmpl = _template(job, template_src, n_have, len(src_times))
            tmpl.to_zarr(job.target, mode="a", append_dim=job.time_dim, **kw)
    regions = regions_for(job)
    group = _progress(job)
    if "region_items" not in group.attrs:  # a new store, or one written before the layout was recorded
        group.attrs["region_items"] = job.region_items
    done: dict[str, np.ndarray] = {}
    n = math.ceil(job.total_items / job.region_items)
    for v in job.variables:
        name = f"done_{v}"
        if name in group:
            arr = _array(group, name)
            if arr.shape[0] < n:
                arr.resize((n,))
        else:
            arr = group.create_array(name, shape=(n,), chunks=(1,), dtype="uint32", fill_value=0)
        done[v] = np.asarray(arr[:])
    # A flag records the region's size: a region that grew (archive appended) is redone.
    return [r for r in regions if (done[r.var][r.index] if r.index < len(done[r.var]) else 0) != _flag(r, job)]


def _check_same_layout(job: ArchiveJob) -> None:
    """Before an existing store is touched: the job's chunks along time must be the store's
    (regions would straddle stored chunks) and its regions the ones the done flags count."""
    root = _open_store(job.target, job.storage_options)
    if root is None:
        return
    stored = _time_chunks(root, job.variables)
    if any(n != job.time_chunk for n in stored.values()):
        raise SourceError(f"store {job.target} holds chunks of {stored} item(s) along time, this job "
                          f"writes chunks of {job.time_chunk}: use the store's time_chunk or write a new store")
    progress = root.get(PROGRESS_GROUP)
    recorded = progress.attrs.get("region_items") if isinstance(progress, zarr.Group) else None
    if recorded is None:  # written before the layout was recorded: the flags are trusted as they are
        return
    if not isinstance(recorded, int):
        raise SourceError(f"store {job.target}: its progress group's region_items is {recorded!r}, not a count")
    if recorded != job.region_items:
        raise SourceError(
            f"store {job.target} was written in regions of {recorded} item(s) (time_chunk x region_chunks), "
            f"this run's hold {job.region_items}: resume with region_chunks={max(recorded // job.time_chunk, 1)} "
            "and the store's time_chunk"
        )


def _array(group: zarr.Group, name: str) -> zarr.Array:
    node = group[name]
    if not isinstance(node, zarr.Array):
        raise SourceError(f"{name} in store {group.store} is a group, expected an array")
    return node


def _flag(region: Region, job: ArchiveJob) -> int:
    """Done-flag value: 1 + items in the region (so a grown region no longer counts as done)."""
    return 1 + (region.stop - region.start)


def _read_times(job: ArchiveJob) -> np.ndarray:
    """The sources' concatenated time values (indexed once by :func:`plan_archive`)."""
    times = getattr(job, "_times", None)
    if times is None:
        times = np.concatenate([index_source(u, job.variables, job.time_dim, job.source_storage_options)[0]
                                for u in job.sources])
        job._times = times  # type: ignore[attr-defined]
    return times


def _codec_models(node: Any) -> list[str]:
    """Model hashes named by coinpp codec configurations anywhere in array metadata."""
    found: list[str] = []
    if isinstance(node, dict):
        if node.get("name") == "coinpp" or node.get("id") == "coinpp":
            cfg = node.get("configuration", node)
            if isinstance(cfg, dict) and isinstance(cfg.get("model"), str):
                found.append(cfg["model"])
        for v in node.values():
            found += _codec_models(v)
    elif isinstance(node, list | tuple):
        for v in node:
            found += _codec_models(v)
    return found


def _check_same_model(job: ArchiveJob, var: str) -> None:
    root = zarr.open_group(job.target, mode="r", storage_options=job.storage_options or None)
    meta = root[var].metadata.to_dict()
    for sha in _codec_models(meta):
        if sha != job.model_hashes[var]:
            raise SourceError(
                f"store {job.target} encodes {var} with model {sha[:12]}…, not with "
                f"{job.model_hashes[var][:12]}…: append with the store's model or write a new store"
            )


def _template(job: ArchiveJob, src: xr.Dataset, start: int, stop: int) -> xr.Dataset:
    """A lazily-zero dataset for items ``[start, stop)`` with the sources' coords and attrs."""
    times = _read_times(job)[start:stop]
    data = {}
    for v in job.variables:
        shape = (stop - start, *src[v].shape[1:])
        chunks = (job.time_chunk, *src[v].shape[1:])
        data[v] = (src[v].dims, da.zeros(shape, chunks=chunks, dtype=src[v].dtype), src[v].attrs)
    coords = {k: c for k, c in src.coords.items() if job.time_dim not in c.dims}
    coords[job.time_dim] = (job.time_dim, times, src[job.time_dim].attrs)
    ds = xr.Dataset(data, coords=coords, attrs=src.attrs)
    for k in ("units", "calendar"):
        if k in src[job.time_dim].encoding:
            ds[job.time_dim].encoding[k] = src[job.time_dim].encoding[k]
    return ds


# ------------------------------------------------------------------------------ regions
@dataclass
class RegionResult:
    var: str
    index: int
    items: int
    raw_bytes: int
    sse: float = 0.0
    count: int = 0
    max_abs_error: float = 0.0
    vmin: float = math.inf
    vmax: float = -math.inf

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_batch_lock = threading.Lock()
_batch_users = 0
_batch_saved: Any = None


@contextlib.contextmanager
def _chunk_batches(n: int) -> Iterator[None]:
    """While writing regions, zarr hands the codec ``n`` chunks at a time (v3: one
    ``encode_many`` call, their fields sharing the encoder's batches — what fills a GPU; the v2
    compressor still takes one at a time). zarr's setting is process-wide and concurrent
    region tasks overlap, so the last one out restores the previous value."""
    global _batch_users, _batch_saved
    with _batch_lock:
        if _batch_users == 0:
            _batch_saved = zarr.config.get("codec_pipeline.batch_size")
        _batch_users += 1
        zarr.config.set({"codec_pipeline.batch_size": n})
    try:
        yield
    finally:
        with _batch_lock:
            _batch_users -= 1
            if _batch_users == 0:
                zarr.config.set({"codec_pipeline.batch_size": _batch_saved})


def write_region(job: ArchiveJob, region: Region, verify: bool = True) -> RegionResult:
    """Encode and write one region; verify it by decoding from the store; then flag it done."""
    resolve_model(job.model_hashes[region.var], job.models[region.var])  # fail early, clearly
    src = _read_items(job, region.start, region.stop, [region.var])
    part = src[[region.var]].drop_vars([c for c in src.coords if c != job.time_dim] + [job.time_dim], errors="ignore")
    with _chunk_batches(job.region_chunks):
        part.to_zarr(job.target, region={job.time_dim: slice(region.start, region.stop)},
                     consolidated=False, zarr_format=job.zarr_format, storage_options=job.storage_options or None)
    values = np.asarray(src[region.var].values)
    res = RegionResult(region.var, region.index, region.stop - region.start, int(values.nbytes))
    if verify:
        store = zarr.open_group(job.target, mode="r", storage_options=job.storage_options or None)
        back = np.asarray(_array(store, region.var)[region.start : region.stop])
        ok = np.isfinite(values)
        if not np.array_equal(ok, np.isfinite(back)):
            raise RuntimeError(f"verification failed for {region.var} items {region.start}-{region.stop}: missing-value mask differs")
        err = np.abs(back[ok].astype(np.float64) - values[ok])
        res.sse, res.count = float((err**2).sum()), int(ok.sum())
        res.max_abs_error = float(err.max(initial=0.0))
        if res.count:
            res.vmin, res.vmax = float(values[ok].min()), float(values[ok].max())
    flags = _array(_progress(job), f"done_{region.var}")
    flags[region.index] = _flag(region, job)
    return res


def stored_bytes(job: ArchiveJob, var: str) -> int:
    """Bytes of the chunk objects of ``var`` in the store (metadata excluded)."""
    fs, path = fsspec.core.url_to_fs(job.target, **(job.storage_options or {}))
    base = posixpath.join(path, var)
    total = 0
    for p, info in fs.find(base, detail=True).items():
        name = p.rsplit("/", 1)[-1]
        if name not in ("zarr.json", ".zarray", ".zattrs", ".zgroup"):
            total += int(info.get("size") or 0)
    return total


def finalize_store(job: ArchiveJob, results: list[RegionResult]) -> dict[str, dict[str, float]]:
    """Write provenance into the store's attributes; return per-variable statistics."""
    root = zarr.open_group(job.target, mode="r+", storage_options=job.storage_options or None)
    root.attrs.update({
        "coinpp": {
            "package_version": __version__,
            "models": {v: {"sha256": job.model_hashes[v], "url": job.models[v]} for v in job.variables},
            "sources": job.sources,
            "codec": {"steps": job.steps, "max_abs_error": job.max_abs_error, "rel_error": job.rel_error,
                      **_grid_options(job)},
        }
    })
    if job.zarr_format == 2:
        zarr.consolidate_metadata(root.store, zarr_format=2)  # takes a store, not storage_options
    stats: dict[str, dict[str, float]] = {}
    for v in job.variables:
        rs = [r for r in results if r.var == v]
        raw = sum(r.raw_bytes for r in rs)
        stored = stored_bytes(job, v)
        count = sum(r.count for r in rs)
        rng = max((r.vmax for r in rs), default=0.0) - min((r.vmin for r in rs), default=0.0)
        rmse = math.sqrt(sum(r.sse for r in rs) / count) if count else float("nan")
        stats[v] = {
            "regions_written": len(rs),
            "raw_bytes_written": raw,
            "stored_bytes": stored,
            "ratio": (job.total_items * _item_bytes(job, v) / stored) if stored else float("nan"),
            "psnr_db": (20 * math.log10(rng / rmse) if rmse > 0 else math.inf) if count else float("nan"),
            "max_abs_error": max((r.max_abs_error for r in rs), default=float("nan")),
        }
    return stats


def _item_bytes(job: ArchiveJob, var: str) -> int:
    store = zarr.open_group(job.target, mode="r", storage_options=job.storage_options or None)
    arr = _array(store, var)
    return int(math.prod(arr.shape[1:]) * arr.dtype.itemsize)
