"""Prefect flow ``meta-train``: meta-learn a COIN++ model on an archive variable.

A thin wrapper over :func:`coinpp_pipeline.meta_train`: reads the training items, trains on
``cuda`` when the worker has a GPU (CPU otherwise), checkpoints every
``checkpoint_every`` steps beside the output so a retried or crashed run resumes, writes the
model (identified by its sha256) and publishes a training report as Prefect artifacts.

``kind="grid"`` trains a latent-grid model instead (:func:`coinpp_pipeline.grid_model.train_grid_model`;
``architecture`` then holds :class:`~coinpp_pipeline.latent_grid.GridConfig` fields, ``batch_size``
and ``first_order`` do not apply, and the run does not checkpoint: a crashed run starts over).
``kind="grid-chain"`` makes the benchmarks' latent-grid model: the whole chain of
:func:`coinpp_pipeline.grid_chain.make_grid_chain` (training, basis, fine-tuning, coders with
an ARM for chunks of ``chain["chunk_items"]`` fields, previous-field predictor, stored poles);
``steps`` is the training and the fine-tuning length, ``chain`` the other
:class:`~coinpp_pipeline.grid_chain.GridChainConfig` settings (its learning rates, not
``outer_lr``). Give the training items in archive order. Each stage is checkpointed beside
the output (``<variable>.chain-*.ckpt``): a crashed run resumes after the last finished stage.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import Field

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # deployments run from a checkout

from coinpp_pipeline import ModelConfig, TrainConfig  # noqa: E402
from coinpp_pipeline import meta_train as _meta_train  # noqa: E402
from coinpp_pipeline.grid_chain import CHAIN_ENCODING, GridChainConfig, make_grid_chain  # noqa: E402
from coinpp_pipeline.grid_model import GridTrainConfig, train_grid_model  # noqa: E402
from coinpp_pipeline.latent_grid import GridConfig  # noqa: E402
from coinpp_pipeline.sources import list_sources, open_source  # noqa: E402
from coinpp_pipeline.training_report import artifact_key, learning_curve_png, report_markdown  # noqa: E402

ERA5_DEFAULT = {
    "grid": "latlon", "patch_shape": [16, 16], "coords": "both", "depth": 5, "width": 128,
    "latent_dim": 16, "bits": 6,
}


@task(name="load-training-items")
def load_training_items(source: str | list[str], variable: str, time_dim: str,
                        max_items: int | None, storage_options: dict[str, Any]) -> Any:
    import numpy as np

    urls = list_sources(source, storage_options)
    arrays = []
    for url in urls:
        ds = open_source(url, storage_options, variables=[variable])
        arrays.append(np.asarray(ds[variable].transpose(time_dim, ...).values))
    data = np.concatenate(arrays)
    return data[:max_items] if max_items else data


@flow(name="meta-train", log_prints=True)
def meta_train_flow(
    source: str | list[str],
    variable: str,
    output: str,
    architecture: dict[str, Any] | None = None,
    steps: Annotated[int, Field(ge=0)] = 2000,
    batch_size: Annotated[int, Field(ge=1)] = 64,
    outer_lr: Annotated[float, Field(gt=0)] = 1e-3,
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.15,
    first_order: bool = True,
    seed: int = 0,
    device: str | None = None,
    checkpoint_every: Annotated[int, Field(ge=0)] = 100,
    time_dim: str = "time",
    max_items: int | None = None,
    storage_options: dict[str, Any] | None = None,
    kind: Literal["patch", "grid", "grid-chain"] = "patch",
    chain: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Meta-train on ``variable`` of the archive at ``source``; write the model to ``output``.

    ``output``: model URL (any fsspec URL); ending in ``/``: a directory, the file is named
    ``<sha256>.coinpp`` (the name ``COINPP_MODEL_PATH`` lookups expect). ``architecture``: :class:`ModelConfig` fields
    (default: a lat/lon model for 1° global fields). Returns ``{"sha256", "url", ...}``.
    """
    logger = get_run_logger()
    data: Any = load_training_items(source, variable, time_dim, max_items, storage_options or {})
    logger.info("training a %s model for %s on %d items of shape %s", kind, variable, data.shape[0], data.shape[1:])
    work = output.rstrip("/") + f"/{variable}" if output.endswith("/") else output
    model: Any
    if chain and kind != "grid-chain":
        raise ValueError(f"chain settings apply to kind='grid-chain', not {kind!r}")
    if kind == "grid-chain":
        gcfg = GridConfig.from_dict(GridConfig(**CHAIN_ENCODING).to_dict() | (architecture or {}))
        clash = sorted({"steps", "seed"} & set(chain or {}))
        if clash:
            raise ValueError(f"give {clash} as the flow's own parameters, not in chain")
        ccfg = GridChainConfig.from_dict((chain or {}) | {"steps": steps, "seed": seed})

        def on_chain(r: dict[str, Any]) -> None:
            if r.get("done"):
                logger.info("chain: %s %s", r["stage"], "from its checkpoint" if r.get("resumed") else "done")
            elif "step" in r:
                logger.info("chain %s: step %d/%d  mse %.5f  bits/value %.4f (normalised)", r["stage"], r["step"],
                            steps, r["mse"], r["bpv"])

        model = make_grid_chain(data, gcfg, ccfg, device=device, log=on_chain, checkpoint=work + ".chain",
                                storage_options=storage_options or {})
    elif kind == "grid":
        gcfg = GridConfig.from_dict(GridConfig().to_dict() | (architecture or {}))
        gtc = GridTrainConfig(steps=steps, lr=outer_lr, seed=seed, device=device,
                              log_every=max(min(100, steps // 10), 1))
        model = train_grid_model(data, gcfg, gtc, log=lambda r: logger.info(
            "step %d/%d  mse %.5f  bits/value %.4f (normalised)", r["step"], steps, r["mse"], r["bpv"]))
    else:
        cfg = ModelConfig.from_dict(architecture or ERA5_DEFAULT)
        tcfg = TrainConfig(steps=steps, batch_size=batch_size, outer_lr=outer_lr, val_fraction=val_fraction,
                           first_order=first_order, seed=seed, device=device,
                           val_every=max(min(100, steps // 10), 1))

        def on_val(step: int, m: dict[str, float]) -> None:
            logger.info("step %d/%d  loss %.5f  validation %.2f dB (normalised)", step, steps, m["train_loss"],
                        m["val_psnr"])

        model = _meta_train(data, cfg, tcfg, callback=on_val, checkpoint_url=work + ".ckpt",
                            checkpoint_every=checkpoint_every)
    if output.endswith("/"):
        output = f"{output}{model.sha256}.coinpp"
    sha = model.save(output, **(storage_options or {}))
    curve = learning_curve_png(model.report, work + ".curve.png", storage_options or {})
    key = artifact_key(f"meta-train-{variable}")
    create_table_artifact(
        [{k: round(v, 5) for k, v in h.items()} for h in model.report.get("history", [])],
        key=f"{key}-history", description=f"Learning curve of the {variable} model {sha[:12]}",
    )
    create_markdown_artifact(report_markdown(model, output, curve), key=f"{key}-report",
                             description=f"Meta-training report for {variable}")
    logger.info("model %s written to %s", sha, output)
    return {"sha256": sha, "url": output, "variable": variable,
            "best_val_psnr_normalised": model.report.get("best_val_psnr_normalised"),
            "device": model.report.get("device")}


if __name__ == "__main__":
    meta_train_flow.serve(name="meta-train-local")
