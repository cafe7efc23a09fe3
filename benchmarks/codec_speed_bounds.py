"""Codec speed through zarr v3, and the error-bounded mode against SZ3, SPERR and ZFP (issue #3).

Real ERA5 sample (data/era5-1deg: 7 daily files, 181x360 fields): meta-train one model per
variable on the first 5 days (17 fields), measure only the last 2 days (7 held-out fields).
Every chunk is one field, ``(1, 181, 360)`` float32.

Command lines::

    # default: t2m, meta-train 600 first-order steps (~5-10 CPU minutes on 2 cores), save the
    # model under benchmarks/results/models/<sha256>.coinpp, print both tables, write JSON
    python benchmarks/codec_speed_bounds.py

    # reuse a saved model (VAR=PATH, or PATH alone when one variable is measured)
    python benchmarks/codec_speed_bounds.py --model benchmarks/results/models/<sha256>.coinpp

    # more variables (each meta-trains its own model), other architecture / step count
    python benchmarks/codec_speed_bounds.py --vars t2m msl u10 v10 --train-steps 600
    python benchmarks/codec_speed_bounds.py --depth 5 --width 128 --bits 6 --train-steps 2000

Table (a), speed: the 7 held-out fields are written to (``arr[:] = data``, timing includes
the chunk files) and read back from (``zarr.open_array(path)[:]`` on a freshly opened store)
a zarr v3 store on local disk, once with everything single-threaded
(``torch.set_num_threads(1)``, zarr ``async.concurrency=1``, ``threading.max_workers=1``)
and once with torch's and zarr's defaults. "codec" columns time the bare codec calls on the
same 7 chunks (no zarr, no disk). MB/s are of raw float32 bytes (1.82 MB); best of
``--repeats`` (``--coinpp-repeats`` for COIN++). ``compressors=None`` everywhere (zarr's
``"auto"`` default would add zstd after the serializer), ``fill_value=NaN``.

How the classical codecs enter zarr v3 (the documented choice): a small serializer defined
here, ``bench.numcodecs`` (an ``ArrayBytesCodec`` whose zarr.json configuration is a
numcodecs config), wraps imagecodecs' numcodecs classes ``imagecodecs_sz3`` and
``imagecodecs_sperr`` and numcodecs' ``zfpy``, squeezing the chunk's unit axes before
encoding so that each codec sees the 181x360 field as 2-D. It is registered with
``zarr.registry.register_codec`` so stores are re-opened from their metadata. zarr's own
adapter ``zarr.codecs.numcodecs.ZFPY`` (numcodecs' zfpy) is measured too, as stock: it hands
zfp the 3-D ``(1, 181, 360)`` chunk, which zfp pads to 4 in the unit axis (about 3x larger
output at the same tolerance). That adapter emits a ``ZarrUserWarning`` (not a
DeprecationWarning) on construction and on every re-open; it is silenced around those calls.
``numcodecs.zarr3`` (deprecated) and zarr_format=2 are not used. SPERR is only called on
2-D/3-D arrays without unit axes: ``sperr_encode`` on a ``(1, 181, 360)`` array aborts the
whole process (``std::length_error``, imagecodecs 2026.3.6).

Settings in (a): every error-bounded codec gets the same absolute bound
``--speed-bound`` x (max - min of the held-out data) (default 1e-2): COIN++
``max_abs_error``, SZ3 ``abs``, SPERR point-wise error (``pwe``), ZFP fixed-accuracy
``tolerance`` (through numcodecs.ZFPY: ``imagecodecs.numcodecs.Zfp`` truncates the
tolerance to an integer, ``int(level)``, so it cannot be used at these bounds). COIN++ is
also timed without a bound (latents only, the model's rate).

Table (b), error-bounded ratios: bounds ``--bounds`` x (max - min of the held-out data)
(default 1e-2 and 1e-3). Each row sums every byte of each chunk's stream (headers, latents
and residual for COIN++, whole SZ3/SPERR/ZFP streams); shared state is not in the ratio but
is listed: the COIN++ model file, and the training mean field (float32, 181x360) for the
"anomaly" rows, which compress data minus the training mean field (the fair baseline: the
classical codecs get the prior the model has learnt). Anomaly rows run the codec at the
bound less 4 float32 ulps of max|data| so that adding the mean back in float32 stays within
the bound. Reported: bytes, ratio vs float32, bits per value, achieved max abs error (and
whether it is <= bound), range-normalised PSNR = 20 log10(range / RMSE) over the 7 fields.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import imagecodecs
import imagecodecs.numcodecs as icn
import numcodecs
import numpy as np
import torch
import zarr
import zfpy
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.common import parse_named_configuration

from coinpp_pipeline import Model, ModelConfig, TrainConfig, bitstream, meta_train
from coinpp_pipeline.codec import COINppCodec
from coinpp_pipeline.metrics import bits_per_value, max_abs_error, psnr
from coinpp_pipeline.resolve import register_model
from coinpp_pipeline.sources import SAMPLE_ERA5, list_sources, load_variable
from coinpp_pipeline.zarr_codec import COINppZarrCodec

icn.register_codecs(verbose=False)


# ------------------------------------------------------------------------ zarr v3 adapter
@dataclass(frozen=True)
class NumcodecsSerializer(ArrayBytesCodec):
    """zarr v3 array->bytes codec around any numcodecs codec (by its config).

    ``squeeze``: drop the chunk's unit axes before encoding (reshape back after decoding).
    """

    is_fixed_size = False
    codec: dict[str, Any]
    squeeze: bool

    def __init__(self, *, codec: dict[str, Any], squeeze: bool = True) -> None:
        cfg = json.loads(json.dumps(dict(codec)))  # JSON-clean (tuples -> lists)
        object.__setattr__(self, "codec", cfg)
        object.__setattr__(self, "squeeze", bool(squeeze))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NumcodecsSerializer:
        _, conf = parse_named_configuration(data, "bench.numcodecs", require_configuration=True)
        return cls(**conf)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {"name": "bench.numcodecs", "configuration": {"codec": self.codec, "squeeze": self.squeeze}}

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: Any) -> int:
        raise NotImplementedError

    @cached_property
    def _codec(self) -> numcodecs.abc.Codec:
        return numcodecs.get_codec(dict(self.codec))

    def _encode_sync(self, chunk_array: Any, chunk_spec: Any) -> Any:
        arr = np.ascontiguousarray(chunk_array.as_numpy_array())
        if self.squeeze:
            arr = arr.reshape([s for s in arr.shape if s != 1] or [1])
        out = self._codec.encode(arr)
        return chunk_spec.prototype.buffer.from_bytes(bytes(out))

    def _decode_sync(self, chunk_bytes: Any, chunk_spec: Any) -> Any:
        out = np.asarray(self._codec.decode(chunk_bytes.to_bytes()))
        out = out.reshape(chunk_spec.shape).astype(chunk_spec.dtype.to_native_dtype(), copy=False)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(out)

    async def _encode_single(self, chunk_array: Any, chunk_spec: Any) -> Any:
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    async def _decode_single(self, chunk_bytes: Any, chunk_spec: Any) -> Any:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)


zarr.registry.register_codec("bench.numcodecs", NumcodecsSerializer)


def stock_zfpy(tolerance: float) -> ArrayBytesCodec:
    """zarr's own numcodecs adapter for numcodecs.ZFPY (fixed-accuracy mode)."""
    from zarr.codecs.numcodecs import ZFPY

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ZFPY(mode=zfpy.mode_fixed_accuracy, tolerance=float(tolerance))


# ------------------------------------------------------------------------ classical codecs
def sz3(bound: float, shape: tuple[int, ...]) -> numcodecs.abc.Codec:
    return icn.Sz3(shape=shape, dtype="<f4", mode="abs", abs=float(bound))


def sperr(bound: float) -> numcodecs.abc.Codec:
    return icn.Sperr(level=float(bound), mode="pwe")


def zfp(bound: float) -> numcodecs.abc.Codec:
    # numcodecs' zfpy, fixed-accuracy (tolerance) mode. Not imagecodecs.numcodecs.Zfp: it
    # stores ``int(level)``, so a tolerance of 0.105 becomes 0 (lossless) and 1.05 becomes 1.
    return numcodecs.ZFPY(mode=zfpy.mode_fixed_accuracy, tolerance=float(bound))


def squeezed(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.reshape([s for s in a.shape if s != 1] or [1]))


# ------------------------------------------------------------------------ timing helpers
def store_bytes(path: Path) -> tuple[int, int]:
    """(chunk bytes, metadata bytes) of a local zarr v3 store."""
    chunks = meta = 0
    for f in path.rglob("*"):
        if f.is_file():
            if f.name == "zarr.json":
                meta += f.stat().st_size
            else:
                chunks += f.stat().st_size
    return chunks, meta


def zarr_roundtrip(path: Path, data: np.ndarray, serializer: Any, repeats: int) -> dict[str, Any]:
    enc_t, dec_t = [], []
    back = None
    for _ in range(repeats):
        if path.exists():
            shutil.rmtree(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
            arr = zarr.create_array(
                store=str(path), shape=data.shape, chunks=(1, *data.shape[1:]), dtype=data.dtype,
                fill_value=np.nan, serializer=serializer, compressors=None, filters=None,
                zarr_format=3,
            )
            t = time.perf_counter()
            arr[:] = data
            enc_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            back = zarr.open_array(str(path), mode="r")[:]
            dec_t.append(time.perf_counter() - t)
    chunks, meta = store_bytes(path)
    assert back is not None
    return {"enc_s": min(enc_t), "dec_s": min(dec_t), "chunk_bytes": chunks, "meta_bytes": meta,
            "max_abs_err": max_abs_error(data, back), "psnr": psnr(data, back)}


def codec_roundtrip(codec: numcodecs.abc.Codec, data: np.ndarray, repeats: int,
                    prep: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
    """Bare codec calls, one per field (the chunks of table (a))."""
    enc_t, dec_t = [], []
    blobs: list[bytes] = []
    for _ in range(repeats):
        fields = [prep(data[i : i + 1]) for i in range(data.shape[0])]
        t = time.perf_counter()
        blobs = [bytes(codec.encode(f)) for f in fields]
        enc_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        outs = [np.asarray(codec.decode(b)) for b in blobs]
        dec_t.append(time.perf_counter() - t)
    return {"enc_s": min(enc_t), "dec_s": min(dec_t), "bytes": sum(len(b) for b in blobs),
            "blobs": blobs, "outs": [o.reshape(data.shape[1:]) for o in outs]}


def set_single_threaded(single: bool, default_threads: int) -> None:
    if single:
        torch.set_num_threads(1)
        zarr.config.set({"async.concurrency": 1, "threading.max_workers": 1})
    else:
        torch.set_num_threads(default_threads)
        zarr.config.set({"async.concurrency": 10, "threading.max_workers": None})


# ------------------------------------------------------------------------ model
def get_model(var: str, train: np.ndarray, args: argparse.Namespace, out: Path) -> tuple[Model, dict]:
    given = dict(args.model_map)
    if var in given:
        t = time.perf_counter()
        model = Model.load(given[var])
        info = {"source": given[var], "train_seconds": None, "load_seconds": time.perf_counter() - t}
        print(f"{var}: loaded model {given[var]} (sha256 {model.sha256[:16]}…)")
        return model, info
    cfg = ModelConfig(
        grid="latlon", patch_shape=tuple(args.patch), coords=args.coords, depth=args.depth,
        width=args.width, w0=args.w0, latent_dim=args.latent_dim, inner_steps=args.inner_steps,
        bits=args.bits,
    )
    tcfg = TrainConfig(steps=args.train_steps, batch_size=args.batch, outer_lr=args.lr,
                       first_order=not args.second_order, val_every=max(args.train_steps // 6, 1))

    def progress(step: int, m: dict) -> None:
        print(f"  step {step:5d}  loss {m['train_loss']:.5f}  val {m['val_psnr']:.2f} dB(norm)  "
              f"{m['time_s']:.0f}s", flush=True)

    print(f"{var}: meta-training {cfg} / {tcfg.steps} steps, batch {tcfg.batch_size}, "
          f"lr {tcfg.outer_lr}, first_order={tcfg.first_order}", flush=True)
    t = time.perf_counter()
    model = meta_train(train, cfg, tcfg, callback=progress)
    train_s = time.perf_counter() - t
    path = out / "models" / f"{model.sha256}.coinpp"
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(path))
    print(f"{var}: meta-training took {train_s:.0f} s; model saved to {path}", flush=True)
    return model, {"source": str(path), "train_seconds": train_s}


# ------------------------------------------------------------------------ tables
def table_a(var: str, test: np.ndarray, model: Model, bound: float, args: argparse.Namespace,
            tmp: Path, default_threads: int) -> list[dict]:
    raw_mb = test.nbytes / 1e6
    field = test.shape[1:]
    rows = []
    entries: list[tuple[str, Any, numcodecs.abc.Codec, Callable, int]] = [
        ("COIN++ (latents only)", COINppZarrCodec(model=model), COINppCodec(model),
         lambda a: a, args.coinpp_repeats),
        ("COIN++ max_abs_error", COINppZarrCodec(model=model, max_abs_error=bound),
         COINppCodec(model, max_abs_error=bound), lambda a: a, args.coinpp_repeats),
        ("ZFP tol (zarr ZFPY, 3-D)", stock_zfpy(bound),
         numcodecs.ZFPY(mode=zfpy.mode_fixed_accuracy, tolerance=bound), lambda a: a, args.repeats),
        ("ZFP tol (zfpy, 2-D)", NumcodecsSerializer(codec=zfp(bound).get_config()), zfp(bound),
         squeezed, args.repeats),
        ("SZ3 abs (imagecodecs)", NumcodecsSerializer(codec=sz3(bound, field).get_config()),
         sz3(bound, field), squeezed, args.repeats),
        ("SPERR pwe (imagecodecs)", NumcodecsSerializer(codec=sperr(bound).get_config()), sperr(bound),
         squeezed, args.repeats),
    ]
    for single in (True, False):
        set_single_threaded(single, default_threads)
        print(f"  load average before: {os.getloadavg()[0]:.2f}", flush=True)
        mode = "1 thread" if single else f"default ({torch.get_num_threads()} torch thr)"
        for name, zcodec, ncodec, prep, reps in entries:
            z = zarr_roundtrip(tmp / "a.zarr", test, zcodec, reps)
            c = codec_roundtrip(ncodec, test, reps, prep)
            row = {
                "var": var, "threads": mode, "codec": name, "bound": None if "latents" in name else bound,
                "zarr_enc_MBps": raw_mb / z["enc_s"], "zarr_dec_MBps": raw_mb / z["dec_s"],
                "codec_enc_MBps": raw_mb / c["enc_s"], "codec_dec_MBps": raw_mb / c["dec_s"],
                "chunk_bytes": z["chunk_bytes"], "meta_bytes": z["meta_bytes"],
                "ratio": test.nbytes / z["chunk_bytes"], "max_abs_err": z["max_abs_err"],
                "psnr": z["psnr"], "repeats": reps,
            }
            rows.append(row)
            print(f"  (a) {mode:<24} {name:<28} enc {row['zarr_enc_MBps']:9.3f} dec {row['zarr_dec_MBps']:9.3f} "
                  f"MB/s  ratio {row['ratio']:7.1f}", flush=True)
    set_single_threaded(False, default_threads)
    print(f"  load average after: {os.getloadavg()[0]:.2f}", flush=True)
    return rows


def table_b(var: str, train: np.ndarray, test: np.ndarray, model: Model, rels: list[float]) -> list[dict]:
    rng = float(test.max() - test.min())
    mean = train.astype(np.float64).mean(axis=0).astype(np.float32)
    anom = (test.astype(np.float64) - mean).astype(np.float32)
    margin = 4 * float(np.finfo(np.float32).eps) * float(np.abs(test).max())
    n = test.shape[0]
    rows = []

    def measure(name: str, codec: numcodecs.abc.Codec, data: np.ndarray, prep: Callable,
                add_mean: bool, bound: float, rel: float, extra: dict | None = None) -> list[bytes]:
        t = time.perf_counter()
        blobs = [bytes(codec.encode(prep(data[i : i + 1]))) for i in range(n)]
        enc_s = time.perf_counter() - t
        outs = np.stack([np.asarray(codec.decode(b)).reshape(test.shape[1:]) for b in blobs])
        recon = (outs.astype(np.float64) + mean).astype(np.float32) if add_mean else outs.astype(np.float32)
        nbytes = sum(len(b) for b in blobs)
        err = max_abs_error(test, recon)
        row = {"var": var, "rel_bound": rel, "bound": bound, "codec": name, "bytes": nbytes,
               "ratio": test.nbytes / nbytes, "bpv": bits_per_value(nbytes, test.size),
               "max_abs_err": err, "within_bound": err <= bound, "psnr": psnr(test, recon),
               "enc_s": enc_s, **(extra or {})}
        rows.append(row)
        print(f"  (b) {rel:g} {name:<26} ratio {row['ratio']:8.1f}  maxerr {err:.4g} "
              f"(bound {bound:.4g})  PSNR {row['psnr']:.2f}", flush=True)
        return blobs

    for rel in rels:
        bound = rel * rng
        codec = COINppCodec(model, max_abs_error=bound)
        sections = {"L": 0, "G": 0, "R": 0}  # patch latents, latent grids, residual
        for blob in measure("COIN++ error-bounded", codec, test, lambda a: a, False, bound, rel):
            chunk = bitstream.unpack(blob)
            for k in sections:
                sections[k] += len(chunk.sections.get(k, b""))
        rows[-1]["latent_bytes"] = sections["L"] + sections["G"]
        rows[-1]["residual_bytes"] = sections["R"]
        rows[-1]["header_bytes"] = rows[-1]["bytes"] - sum(sections.values())
        ab = bound - margin
        for name, mk in (("SZ3", lambda b: sz3(b, test.shape[1:])), ("SPERR", sperr), ("ZFP accuracy", zfp)):
            measure(f"{name}", mk(bound), test, squeezed, False, bound, rel)
            measure(f"{name} anomaly", mk(ab), anom, squeezed, True, bound, rel)
    return rows


def print_tables(var: str, a: list[dict], b: list[dict], info: dict) -> None:
    if a:
        print_table_a(var, a, info)
    print_table_b(var, b, info)


def print_table_a(var: str, a: list[dict], info: dict) -> None:
    print()
    print(f"=== (a) {var}: zarr v3 local store, 7 held-out fields, chunks (1,181,360) float32, "
          f"bound {a[1]['bound']:.4g} = {info['speed_rel']:g} x range; MB/s of raw float32 ===")
    hdr = (f"{'threads':<24} {'codec':<28} {'zarr enc':>9} {'zarr dec':>9} {'codec enc':>9} "
           f"{'codec dec':>9} {'chunk B':>8} {'ratio':>7} {'maxerr':>8} {'PSNR':>6}")
    print(hdr)
    for r in a:
        print(f"{r['threads']:<24} {r['codec']:<28} {r['zarr_enc_MBps']:>9.3f} {r['zarr_dec_MBps']:>9.2f} "
              f"{r['codec_enc_MBps']:>9.3f} {r['codec_dec_MBps']:>9.2f} {r['chunk_bytes']:>8} "
              f"{r['ratio']:>7.1f} {r['max_abs_err']:>8.4f} {r['psnr']:>6.2f}")


def print_table_b(var: str, b: list[dict], info: dict) -> None:
    print()
    print(f"=== (b) {var}: error-bounded, bounds relative to the held-out range {info['range']:.4g}; "
          f"all chunk bytes counted ===")
    hdr = (f"{'rel':>6} {'bound':>8} {'codec':<22} {'bytes':>8} {'ratio':>8} {'bpv':>7} "
           f"{'maxerr':>8} {'<=bnd':>5} {'PSNR dB':>8}")
    print(hdr)
    for r in b:
        print(f"{r['rel_bound']:>6g} {r['bound']:>8.4g} {r['codec']:<22} {r['bytes']:>8} {r['ratio']:>8.1f} "
              f"{r['bpv']:>7.3f} {r['max_abs_err']:>8.4g} {'yes' if r['within_bound'] else 'NO':>5} "
              f"{r['psnr']:>8.2f}")
    for r in b:
        if "latent_bytes" in r:
            print(f"COIN++ at {r['rel_bound']:g}: latents {r['latent_bytes']} B, residual "
                  f"{r['residual_bytes']} B, headers {r['header_bytes']} B")
    print(f"shared state not in the ratios: COIN++ model file {info['model_bytes']} B; training mean "
          f"field (anomaly rows) {info['mean_bytes']} B as float32. Training mean alone: "
          f"PSNR {info['mean_psnr']:.2f} dB, max err {info['mean_maxerr']:.3g}")


def parse_models(values: list[str], vars_: list[str]) -> list[tuple[str, str]]:
    out = []
    for v in values:
        if "=" in v and not Path(v).exists():
            var, path = v.split("=", 1)
        elif len(vars_) == 1:
            var, path = vars_[0], v
        else:
            raise SystemExit(f"--model {v!r}: use VAR=PATH when several variables are measured")
        out.append((var, path))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vars", nargs="+", default=["t2m"])
    ap.add_argument("--data", default=str(SAMPLE_ERA5))
    ap.add_argument("--train-days", type=int, default=5)
    ap.add_argument("--model", action="append", default=[], metavar="[VAR=]PATH",
                    help="reuse a saved model instead of meta-training")
    ap.add_argument("--train-steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--second-order", action="store_true")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--w0", type=float, default=30.0)
    ap.add_argument("--latent-dim", type=int, default=16)
    ap.add_argument("--patch", type=int, nargs=2, default=[16, 16])
    ap.add_argument("--coords", default="both", choices=["local", "global", "both"])
    ap.add_argument("--inner-steps", type=int, default=3)
    ap.add_argument("--bits", type=int, default=6)
    ap.add_argument("--speed-bound", type=float, default=1e-2, help="table (a) bound, x range")
    ap.add_argument("--bounds", type=float, nargs="+", default=[1e-2, 1e-3], help="table (b), x range")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--coinpp-repeats", type=int, default=1)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    args.model_map = parse_models(args.model, args.vars)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    default_threads = torch.get_num_threads()
    files = list_sources(args.data)
    print(f"python {platform.python_version()}, torch {torch.__version__} ({default_threads} threads), "
          f"zarr {zarr.__version__}, numcodecs {numcodecs.__version__}, imagecodecs "
          f"{imagecodecs.__version__}, zfpy {importlib.metadata.version('zfpy')}", flush=True)
    results: dict[str, Any] = {"argv": sys.argv, "args": {k: v for k, v in vars(args).items()}}
    for var in args.vars:
        train = load_variable(files[: args.train_days], var).astype(np.float32)
        test = load_variable(files[args.train_days :], var).astype(np.float32)
        print(f"{var}: train {train.shape} from {args.train_days} files, held-out {test.shape} "
              f"from {len(files) - args.train_days} files", flush=True)
        model, minfo = get_model(var, train, args, out)
        register_model(model)
        rng = float(test.max() - test.min())
        mean = train.astype(np.float64).mean(axis=0)
        mean_rec = np.broadcast_to(mean.astype(np.float32), test.shape)
        info = {"range": rng, "speed_rel": args.speed_bound, "model_bytes": len(model.to_bytes()),
                "model_sha256": model.sha256, "model_config": model.config.to_dict(),
                "mean_bytes": int(mean.astype(np.float32).nbytes),
                "mean_psnr": psnr(test, mean_rec), "mean_maxerr": max_abs_error(test, mean_rec), **minfo}
        a: list[dict] = []
        tmp = Path(tempfile.mkdtemp(prefix="zarr-speed-", dir=out))
        try:
            if not args.skip_speed:
                a = table_a(var, test, model, args.speed_bound * rng, args, tmp, default_threads)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        b = table_b(var, train, test, model, args.bounds)
        print_tables(var, a, b, info)
        results[var] = {"info": info, "speed": a, "bounds": b}
        (out / f"codec_speed_bounds_{var}.json").write_text(json.dumps(results[var], indent=1, default=str))
    (out / "codec_speed_bounds.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"JSON written to {out / 'codec_speed_bounds.json'}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
