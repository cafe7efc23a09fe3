"""Train a latent-grid COIN++ model on one benchmark dataset's training split (issue #5).

    python benchmarks/grid_train.py --dataset era5:t2m --steps 2000
    python benchmarks/rd_compare.py --dataset era5:t2m --model benchmarks/results/models/<sha>.coinpp

Uses only the training split of :mod:`datasets` (the held-out chunks are never seen); fields
are the last two axes of the training items. Climate datasets keep a climatology (the
training mean field, fixed field shape); ``mri`` and ``image`` are trained without one.
Prints the training curve and the wall time, saves ``<out>/models/<sha256>.coinpp`` and
prints its path.

``--from-model M`` skips training: it saves a copy of ``M`` with the encoding defaults given
(``--encode-steps``, ``--encode-lr``, ``--encode-noise-fraction``; the network is unchanged)::

    python benchmarks/grid_train.py --from-model benchmarks/results/models/<sha>.coinpp --encode-lr 0.08

``--table-sets λ …`` (after training, or with ``--from-model``) adds entropy tables per rate
weight, counted from the encoder's latents of the training fields (``--table-fields N``: of N
evenly spaced ones), see :func:`coinpp_pipeline.grid_model.fit_table_sets`::

    python benchmarks/grid_train.py --dataset era5:t2m --from-model <sha>.coinpp --table-sets 0.1 0.3 1 3 10 30 100

``--arm`` (with ``--table-sets``) also trains a learned autoregressive entropy model on the same
latents, all rate weights together (:func:`coinpp_pipeline.grid_model.fit_coders`,
:mod:`coinpp_pipeline.latent_arm`); chunks use it where it codes shorter than the tables::

    python benchmarks/grid_train.py --dataset era5:t2m --from-model <sha>.coinpp --table-sets 0.1 0.3 1 3 10 30 100 --arm

``--arm-chunk-items N`` (N > 1, e.g. 12 for mri) gives the ARM the item context: each field's
previous one in its chunk (:mod:`coinpp_pipeline.latent_arm`), trained on runs of N
consecutive training fields.

``--basis K``: the synthesis adds the training anomalies' top K principal components, with K
coefficients per field in each chunk, quantized and entropy-coded
(:func:`coinpp_pipeline.grid_model.fit_basis`, :mod:`coinpp_pipeline.basis_coding`):
trained with it, or with ``--from-model`` added to a trained model (before any analysis
network or table sets)::

    python benchmarks/grid_train.py --dataset era5:t2m --from-model <sha>.coinpp --basis 16

``--coeff-coder`` with ``--from-model`` gives a basis model written before the coefficient
coder (float16 coefficients) one (:func:`coinpp_pipeline.grid_model.fit_coefficient_coder`).

``--analysis-steps N`` (after training, or with ``--from-model``; before any table sets) adds an
analysis network whose guess is the encoder's starting point, see
:func:`coinpp_pipeline.grid_model.fit_analysis`; ``encode(..., steps=0)`` then encodes with the
guess alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from datasets import load  # noqa: E402

from coinpp_pipeline.grid_model import (  # noqa: E402
    GridModel,
    GridTrainConfig,
    detect_constant_rows,
    finetune_for_basis,
    fit_analysis,
    fit_basis,
    fit_coders,
    fit_coefficient_coder,
    train_grid_model,
)
from coinpp_pipeline.latent_grid import GridConfig  # noqa: E402


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="era5:t2m")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3, help="synthesis network learning rate")
    ap.add_argument("--latent-lr", type=float, default=3e-2, help="training latents' learning rate")
    ap.add_argument("--factors", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64])
    ap.add_argument("--rate-weights", type=float, nargs="+", default=[0.3, 1, 3, 10, 30])
    ap.add_argument("--contexts", choices=["causal", "row"], default="causal")
    ap.add_argument("--refine-channels", type=int, default=0)
    ap.add_argument("--ste-fraction", type=float, default=0.2)
    ap.add_argument("--sga-fraction", type=float, default=0.0)
    ap.add_argument("--encode-steps", type=int, default=None, help="encoder steps (default 200)")
    ap.add_argument("--encode-lr", type=float, default=None, help="encoder learning rate (default 0.03)")
    ap.add_argument("--encode-noise-fraction", type=float, default=None,
                    help="the model's default share of encoder steps with additive noise (default 0.5)")
    ap.add_argument("--table-sets", type=float, nargs="+", default=None, metavar="LAMBDA",
                    help="after training (or on --from-model): add entropy tables per rate weight, counted "
                         "from the encoder's latents of the training fields at each of these rate weights")
    ap.add_argument("--table-fields", type=int, default=None,
                    help="with --table-sets: encode at most this many training fields (evenly spaced)")
    ap.add_argument("--arm", action="store_true",
                    help="with --table-sets: also train a learned autoregressive entropy model on those latents")
    ap.add_argument("--encode-rate", choices=["tables", "arm"], default=None,
                    help="the encoder's rate term: the tables' Laplace proxy (default) or the model's ARM")
    ap.add_argument("--predict-previous", action="store_true",
                    help="with --from-model: each field of a chunk after the first is also predicted from the "
                         "previous one's decoded output (GridConfig.predict_previous)")
    ap.add_argument("--constant-rows", action="store_true",
                    help="with --from-model: store the values of the rows constant in every training field (the "
                         "poles of a latitude-longitude grid) instead of synthesising them (GridConfig.constant_rows)")
    ap.add_argument("--latents-cache", default=None, metavar="NPZ",
                    help="with --table-sets: reuse / save the encoder's training latents per rate weight here "
                         "(only valid for the same --from-model and training fields)")
    ap.add_argument("--basis-finetune-steps", type=int, default=0, metavar="N",
                    help="with --from-model of a basis model: train its synthesis N more steps on the training "
                         "fields' residuals after bases computed without them and their --cross-fit-gaps "
                         "neighbours (finetune_for_basis; uses --lr, --latent-lr, --batch, --rate-weights, "
                         "--ste-fraction, --sga-fraction, --seed); drops table sets / ARM: add --table-sets")
    ap.add_argument("--cross-fit-gaps", type=int, nargs="+", default=[0], metavar="G",
                    help="basis models: encode the training fields for the coders once per gap G, each with a "
                         "basis computed without it and its G neighbours on either side (default 0)")
    ap.add_argument("--arm-hidden", type=int, default=24)
    ap.add_argument("--arm-steps", type=int, default=3000)
    ap.add_argument("--arm-chunk-items", type=int, default=1,
                    help="N > 1: the ARM also sees each field's previous one in its chunk, trained on runs of N "
                         "consecutive training fields as chunks (e.g. 12 for mri, 20 for hadcm3)")
    ap.add_argument("--analysis-steps", type=int, default=0,
                    help="after training (or on --from-model): fit an analysis network (the encoder's "
                         "starting guess; encode with steps=0 to use the guess alone) for this many steps")
    ap.add_argument("--analysis-channels", type=int, default=16)
    ap.add_argument("--analysis-batch", type=int, default=16)
    ap.add_argument("--analysis-ste-fraction", type=float, default=0.3,
                    help="share of the analysis fitting steps with straight-through rounding")
    ap.add_argument("--basis", type=int, default=0,
                    help="principal components of the training anomalies added by the synthesis")
    ap.add_argument("--coeff-coder", action="store_true",
                    help="with --from-model: entropy-code the basis coefficients (a model with a basis)")
    ap.add_argument("--from-model", default=None,
                    help="no training: copy this grid model with the encoding defaults given")
    ap.add_argument("--climatology", choices=["auto", "yes", "no"], default="auto")
    ap.add_argument("--device", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    if args.arm and not args.table_sets:
        ap.error("--arm needs --table-sets (its rate weights)")
    if args.arm_chunk_items > 1 and args.table_fields is not None:
        ap.error("--arm-chunk-items needs consecutive training fields: drop --table-fields")
    encoding = {"encode_steps": args.encode_steps, "encode_lr": args.encode_lr,
                "encode_noise_fraction": args.encode_noise_fraction}
    if args.from_model:
        base = GridModel.load(args.from_model)
        if not isinstance(base, GridModel):
            ap.error(f"--from-model {args.from_model} is not a grid model")
        base.to(args.device)  # cuda when present (fine-tuning and coder fits run there), else the CPU
        model = base.with_encoding(**encoding)
        if args.analysis_steps or args.table_sets or args.basis or args.coeff_coder or args.basis_finetune_steps:
            train = _train_fields(args.dataset)
            if args.coeff_coder:
                model = fit_coefficient_coder(model, train)
                print(f"coefficient coder: scale codes {model.coeff_coder.scale_codes.tolist()}", flush=True)
            if args.basis:
                model = fit_basis(model, train, args.basis)
                print(f"basis of {args.basis} principal components: {model.report['basis']['energy']:.3f} "
                      f"of the training anomalies' energy", flush=True)
            if args.basis_finetune_steps:
                tc = GridTrainConfig(steps=args.basis_finetune_steps, batch=args.batch,
                                     rate_weights=tuple(args.rate_weights), lr=args.lr, latent_lr=args.latent_lr,
                                     seed=args.seed, device=args.device, ste_fraction=args.ste_fraction,
                                     sga_fraction=args.sga_fraction, log_every=max(args.basis_finetune_steps // 10, 1))
                print(f"fine-tuning the synthesis for the basis ({args.basis_finetune_steps} steps, gaps "
                      f"{args.cross_fit_gaps})", flush=True)
                model = finetune_for_basis(model, train, tc, gaps=args.cross_fit_gaps, log=lambda r: print(
                    f"  step {r['step']:5d}  mse {r['mse']:.4f}  bpv {r['bpv']:.4f}  {r['time_s']:.0f}s", flush=True))
            if args.analysis_steps:
                model = _analysis(model, train, args)
            if args.table_sets:
                model = _table_sets(model, train, args)
        if args.encode_rate:
            model = model.with_encoding(encode_rate=args.encode_rate)
        if args.predict_previous:
            model = model.with_previous_predictor()
        if args.constant_rows:
            rows = detect_constant_rows(_train_fields(args.dataset))
            print(f"rows constant in every training field: {list(rows)}", flush=True)
            model = model.with_constant_rows(rows)
        return _save(model, args.out)

    train = _train_fields(args.dataset)
    clim = {"yes": True, "no": False}.get(args.climatology, args.dataset.startswith(("era5", "hadcm3")))
    config = GridConfig(factors=tuple(args.factors), hidden=args.hidden, climatology=clim,
                        refine_channels=args.refine_channels, contexts=args.contexts, basis=args.basis,
                        **{k: v for k, v in encoding.items() if v is not None})
    tc = GridTrainConfig(steps=args.steps, batch=args.batch, rate_weights=tuple(args.rate_weights),
                         lr=args.lr, latent_lr=args.latent_lr,
                         seed=args.seed, device=args.device,
                         ste_fraction=args.ste_fraction, sga_fraction=args.sga_fraction, log_every=max(args.steps // 10, 1))
    print(f"{args.dataset}: {train.shape[0]} training fields {train.shape[1:]}, climatology={clim}, "
          f"torch {torch.__version__} threads {torch.get_num_threads()}", flush=True)
    t = time.perf_counter()
    model = train_grid_model(train, config, tc, log=lambda r: print(
        f"  step {r['step']:5d}  mse {r['mse']:.4f}  bpv {r['bpv']:.4f}  {r['time_s']:.0f}s", flush=True))
    print(f"trained in {time.perf_counter() - t:.0f} s")
    if args.analysis_steps:
        model = _analysis(model, train, args)
    if args.table_sets:
        model = _table_sets(model, train, args)
    return _save(model, args.out)


def _train_fields(dataset: str) -> np.ndarray:
    ds = load(dataset)
    return ds.train.reshape(-1, *ds.train.shape[-2:])


def _table_sets(model: GridModel, train: np.ndarray, args: argparse.Namespace) -> GridModel:
    if args.table_fields is not None and args.table_fields < train.shape[0]:
        train = train[np.linspace(0, train.shape[0] - 1, args.table_fields).round().astype(int)]
    what = "entropy tables per rate weight" + (" and an ARM" if args.arm else "")
    print(f"{what} {args.table_sets} from {train.shape[0]} encoded training fields", flush=True)
    cache: dict[float, list[np.ndarray]] | None = None
    if args.latents_cache:
        cache = {}
        if Path(args.latents_cache).exists():
            with np.load(args.latents_cache) as f:
                keys = sorted((float(k.split("/")[0]), int(k.split("/")[1]), k) for k in f.files)  # "<lambda>/<level>"
                for lam, _, key in keys:
                    cache.setdefault(lam, []).append(f[key])
    out = fit_coders(model, train, args.table_sets, table_sets=True, arm=args.arm, arm_hidden=args.arm_hidden,
                     arm_steps=args.arm_steps, latents=cache, arm_chunk_items=args.arm_chunk_items,
                     cross_fit_gaps=args.cross_fit_gaps, log=lambda r: print(
                         f"  {r.get('rate_weight', r.get('arm'))}: {r['time_s']:.0f}s", flush=True))
    if cache is not None:
        np.savez(args.latents_cache, **{f"{lam}/{lv}": g for lam, grids in cache.items() for lv, g in enumerate(grids)})
    return out


def _analysis(model: GridModel, train: np.ndarray, args: argparse.Namespace) -> GridModel:
    print(f"analysis network ({args.analysis_channels} channels) from {train.shape[0]} training fields", flush=True)
    return fit_analysis(model, train, channels=args.analysis_channels, steps=args.analysis_steps,
                        batch=args.analysis_batch, ste_fraction=args.analysis_ste_fraction,
                        seed=args.seed, log=lambda r: print(
                            f"  step {r['step']:5d}  mse {r['mse']:.4f}  bpv {r['bpv']:.4f}  {r['time_s']:.0f}s", flush=True))


def _save(model: GridModel, out: str) -> str:
    models = Path(out) / "models"
    models.mkdir(parents=True, exist_ok=True)
    path = models / f"{model.sha256}.coinpp"
    model.save(str(path))
    c = model.config
    print(f"model file {len(model.to_bytes())} B ({sum(p.numel() for p in model.network.parameters())} "
          f"parameters, mean field {np.asarray(model.mean).nbytes} B); encoding defaults: {c.encode_steps} "
          f"steps, lr {c.encode_lr:g}, noise share {c.encode_noise_fraction:g}")
    print(path)
    return str(path)


if __name__ == "__main__":
    main(sys.argv[1:])
