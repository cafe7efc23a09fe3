"""Prefect flow ``compress-archive``: NetCDF / Zarr / NIfTI archive -> COIN++ Zarr store.

Thin wrapper over :mod:`coinpp_pipeline.archive`: plan (index sources, create or extend the
store), write chunk-aligned regions in parallel with the chosen task runner (threads by
default, Dask for a cluster), record provenance and publish a report. Rerunning resumes:
regions already flagged done are skipped; files added to the archive are appended.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # deployments run from a checkout

from coinpp_pipeline import Model  # noqa: E402
from coinpp_pipeline.archive import (  # noqa: E402
    ArchiveJob,
    Region,
    RegionResult,
    SourceError,
    finalize_store,
    plan_archive,
    prepare_store,
    resolve_time_chunk,
    write_region,
)
from coinpp_pipeline.resolve import allow_model_urls  # noqa: E402
from coinpp_pipeline.sources import list_sources  # noqa: E402
from coinpp_pipeline.sperr_residual import MAX_RESIDUAL_BPV  # noqa: E402
from coinpp_pipeline.training_report import artifact_key  # noqa: E402
from flows.meta_train import meta_train_flow  # noqa: E402

TRANSIENT = (OSError, TimeoutError, ConnectionError)


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry storage hiccups, not bad input (SourceError and other ValueErrors fail at once)."""
    try:
        state.result()
    except SourceError:
        return False
    except TRANSIENT:
        return True
    except Exception:
        return False
    return False


@task(name="write-region", retries=3, retry_delay_seconds=[1, 5, 20], retry_condition_fn=_transient)
def write_region_task(job: ArchiveJob, region: Region, verify: bool) -> RegionResult:
    allow_model_urls(*job.models.values())  # the flow's own parameters, not store metadata
    return write_region(job, region, verify=verify)


@flow(name="encode-regions")
def encode_regions(job: ArchiveJob, regions: list[Region], verify: bool) -> list[RegionResult]:
    logger = get_run_logger()
    progress = create_progress_artifact(progress=0.0, description=f"regions written to {job.target}")
    futures = [write_region_task.submit(job, r, verify) for r in regions]
    results: list[RegionResult] = []
    with _terminal_bar(len(futures), f"compressing into {job.target}") as advance:
        for i, fut in enumerate(futures, 1):
            res = fut.result()
            results.append(res)
            update_progress_artifact(progress, progress=100.0 * i / len(futures))  # type: ignore[arg-type]
            logger.info("[%d/%d] %s items %d-%d written", i, len(futures), res.var,
                        regions[i - 1].start, regions[i - 1].stop)
            advance()
    return results


@contextlib.contextmanager
def _terminal_bar(total: int, description: str) -> Iterator[Callable[[], None]]:
    """A progress bar on an interactive terminal (rich, which Prefect ships); a no-op else."""
    if not sys.stderr.isatty():
        yield lambda: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        tid = bar.add_task(description, total=total)
        yield lambda: bar.advance(tid)


def _absolute(url: str) -> str:
    """Local paths become absolute, so the codec configuration works from any directory."""
    return url if "://" in url else str(Path(url).resolve())


def _runner(runner: str, max_workers: int, dask_address: str | None) -> Any:
    if runner == "dask":
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": max_workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    return ThreadPoolTaskRunner(max_workers=max_workers)


@flow(name="compress-archive", log_prints=True)
def compress_archive(
    source: str | list[str],
    target: str,
    variables: list[str],
    model: str | dict[str, str] | None = None,
    model_dir: str | None = None,
    train_steps: Annotated[int, Field(ge=0)] = 1000,
    architecture: dict[str, Any] | None = None,
    time_dim: str = "time",
    time_chunk: Annotated[int, Field(ge=1)] | None = None,
    region_chunks: Annotated[int, Field(ge=1)] = 4,
    zarr_format: Literal[2, 3] = 3,
    steps: Annotated[int, Field(ge=0)] | None = None,
    max_abs_error: Annotated[float, Field(gt=0)] | None = None,
    rel_error: Annotated[float, Field(gt=0)] | None = None,
    verify: bool = True,
    runner: Literal["threads", "dask"] = "threads",
    max_workers: Annotated[int, Field(ge=1)] = 2,
    dask_address: str | None = None,
    storage_options: dict[str, Any] | None = None,
    source_storage_options: dict[str, Any] | None = None,
    model_kind: Literal["patch", "grid", "grid-chain"] = "patch",
    chain: dict[str, Any] | None = None,
    rate_weight: Annotated[float, Field(ge=0)] | None = None,
    residual_bpv: Annotated[float, Field(gt=0, le=MAX_RESIDUAL_BPV)] | None = None,
) -> dict[str, Any]:
    """Compress ``variables`` of the archive at ``source`` into the Zarr store ``target``.

    ``model``: a model URL for every variable, or ``{variable: URL}``; when None (or a variable
    is missing), a model is meta-trained first (subflow ``meta-train``, ``train_steps`` steps)
    and written to ``model_dir`` as ``<sha256>.coinpp`` (default: beside the store,
    ``<target>.models/``; put that directory on ``COINPP_MODEL_PATH`` for readers).
    Codec parameters: ``steps`` (inner steps), ``max_abs_error`` / ``rel_error`` (error bound),
    ``rate_weight`` (latent-grid models: larger = smaller store), ``residual_bpv`` (latent-grid
    models: SPERR codes the network's residual at that many bits per value, for higher quality). ``model_kind``: the kind of
    model trained when none is given ("patch" COIN++, "grid" latent-grid — whose climatology
    needs whole fields per chunk, as chunks along time have — or "grid-chain", the
    benchmarks' latent-grid model, ``chain``: its :class:`~coinpp_pipeline.grid_chain.GridChainConfig`
    settings). ``time_chunk``: items per chunk along time — by default an existing store's,
    else what the models were made for (``Model.chunk_items``: 7 for the chain's ERA5 models,
    1 for patch models); a store is never rechunked. Returns per-variable statistics (raw bytes, stored bytes, ratio, PSNR, max abs error).
    """
    logger = get_run_logger()
    sources = list_sources(source, source_storage_options)
    logger.info("%d source file(s) for %s", len(sources), target)
    models = dict(model) if isinstance(model, dict) else {v: model for v in variables if model}
    model_dir = _absolute((model_dir or target.rstrip("/") + ".models").rstrip("/"))
    models = {v: _absolute(u) for v, u in models.items()}
    for v in variables:
        if not models.get(v):
            out = meta_train_flow(source=sources, variable=v, output=f"{model_dir}/",
                                  architecture=architecture, steps=train_steps, time_dim=time_dim,
                                  storage_options=storage_options, kind=model_kind, chain=chain)
            models[v] = out["url"]
    hashes, preferred = {}, {}
    for v in variables:
        m = Model.load(models[v], **(storage_options or {}))
        hashes[v], preferred[v] = m.sha256, m.chunk_items
    time_chunk = resolve_time_chunk(target, list(variables), time_chunk, preferred, storage_options)
    logger.info("%d item(s) per chunk along %s", time_chunk, time_dim)
    for v, n in preferred.items():
        if n != time_chunk:
            logger.warning("the model for %s was made for chunks of %d item(s), the store's hold %d: it codes "
                           "them less well", v, n, time_chunk)
    job = ArchiveJob(
        sources=sources, target=target, variables=list(variables), models=models,
        model_hashes=hashes, time_dim=time_dim, time_chunk=time_chunk, region_chunks=region_chunks,
        zarr_format=zarr_format, steps=steps, max_abs_error=max_abs_error, rel_error=rel_error,
        rate_weight=rate_weight, residual_bpv=residual_bpv,
        storage_options=storage_options or {}, source_storage_options=source_storage_options or {},
    )
    allow_model_urls(*models.values())
    job = plan_archive(job)
    pending = prepare_store(job)
    logger.info("%d item(s) in the archive, %d region(s) to write", job.total_items, len(pending))
    results = (encode_regions.with_options(task_runner=_runner(runner, max_workers, dask_address))(job, pending, verify)
               if pending else [])
    stats = finalize_store(job, results)
    for v, s in stats.items():
        row = {"variable": v, "model": hashes[v], **{k: (round(x, 4) if isinstance(x, float) else x)
                                                   for k, x in s.items()}}
        create_table_artifact([row], key=artifact_key(f"compress-{Path(target).name}-{v}"),
                              description=f"COIN++ compression of {v} ({len(sources)} file(s)) into {target}")
    md = [f"# compress-archive → `{target}`", "", f"{len(sources)} source file(s), "
          f"{job.total_items} items, {len(pending)} region(s) written this run.", "",
          "| variable | model | stored bytes | ratio | PSNR dB (written) | max abs error |", "|---|---|---|---|---|---|"]
    for v, s in stats.items():
        md.append(f"| {v} | `{hashes[v][:12]}` | {s['stored_bytes']:,} | {s['ratio']:.1f} | "
                  f"{s['psnr_db']:.2f} | {s['max_abs_error']:.4g} |")
    create_markdown_artifact("\n".join(md), key=artifact_key(f"compress-report-{Path(target).name}"))
    for line in md[4:]:
        logger.info(line)
    return {"target": target, "items": job.total_items, "regions_written": len(pending),
            "models": hashes, "stats": stats}


if __name__ == "__main__":
    compress_archive.serve(name="compress-archive-local")
