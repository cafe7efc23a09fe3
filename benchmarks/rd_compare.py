"""Rate-distortion comparison of COIN++ against SZ3, SPERR, ZFP and BitRound+Zstd (issue #5).

Datasets (``--dataset``, benchmarks/datasets.py; default ``era5:t2m``). Each has a training
split, used only for the COIN++ quantizer refits (``with_bits``) and the mean of the anomaly
rows, and held-out chunks, the only data measured; every codec compresses each held-out chunk
on its own as a float32 array of the chunk's dimensionality (2-D or 3-D), and every byte of
every stream is counted.

* ``era5:<var>`` (t2m, msl, u10, v10; ``--var V`` is an alias of ``--dataset era5:V``):
  data/era5-1deg, 7 daily files of 181x360 fields. The first ``--train-days`` (5) files (17
  fields) are training data; the 7 fields of the last 2 files are held out, one 2-D
  ``(181, 360)`` chunk per field (as in benchmarks/codec_speed_bounds.py). Raw float32.
* ``hadcm3``: data/hadcm3-na, HadCM3 June air temperature, 240 yearly 37x49 fields per
  scenario. Training = scenario A1B; held-out = scenario E1's years 2000-2099 as 5 3-D
  chunks of 20 consecutive years ``(20, 37, 49)``; the anomaly mean is the A1B time-mean
  field (repeated over the 20 years). Raw float32. Both scenarios share the historical run
  (E1's first 140 years equal A1B's), which is why only 2000-2099 is held out.
* ``mri``: data/mri/example4d.nii.gz, EPI int16 ``(128, 96, 24, 2)``. Training = slices
  z < 12 of both time points; held-out = the 3-D blocks ``[:, :, 12:, t]``, t = 0, 1 (two
  ``(128, 96, 12)`` chunks). Raw int16.
* ``image``: data/images (scikit-image sample photos). Held-out = camera.png, one 2-D
  ``(512, 512)`` chunk; training = astronaut (to gray, BT.601), brick, grass, gravel. Raw
  uint8.

Command lines::

    # classical codecs only, all target ratios (10 30 100 300 1000 3000), ERA5 t2m
    python benchmarks/rd_compare.py

    # another dataset, only targets 100 and 1000 (fast check), one timing run
    python benchmarks/rd_compare.py --dataset mri --quick --repeats 1

    # with COIN++ rows from a saved model (e.g. one written by codec_speed_bounds.py)
    python benchmarks/rd_compare.py --model benchmarks/results/models/<sha256>.coinpp

    # another variable / fewer COIN++ knobs
    python benchmarks/rd_compare.py --dataset era5:msl --model M.coinpp --coinpp-bits 4 6 --coinpp-steps 3

    # a latent-grid model at rate weight 1, and hybrid points (SPERR on its residual at
    # 0.1 / 0.3 bits per value), no error-bounded rows, results in another folder
    python benchmarks/rd_compare.py --dataset era5:msl:7 --model M.coinpp --rate-weights 1 \
        --hybrid 1:0.1 1:0.3 --coinpp-bounds --out benchmarks/results/hybrid

Compression ratio = raw held-out bytes in the source dtype (values x 4 for float32, 2 for
int16, 1 for uint8) / all stream bytes; the table and plot say which ("ratio vs int16").

Classical codecs: for each target ratio the codec's knob is bisected (in log space) until the
achieved ratio over all held-out chunks is within ``--tol`` (default 3 %) of the target; when
the target is out of the knob's reach, or bisection does not converge, the nearest
achievable point is reported (``hit`` column "no").

* SZ3: imagecodecs' numcodecs ``Sz3`` (given the chunk shape), absolute error bound ``abs``,
  searched up to 10 x range; on t2m SZ3 saturates near ratio ~1700 (plain and anomaly), so
  target 3000 reports that (degenerate, bound > range) point.
* SPERR: imagecodecs' numcodecs ``Sperr``, rate mode ``bpp`` (bits per value). Never called
  on arrays with a length-1 axis (``sperr_encode`` aborts the process on them; datasets.py
  refuses such chunk shapes).
* ZFP: numcodecs' ``ZFPY`` (zfpy 1.0.1), fixed-accuracy ``tolerance``. Not
  ``imagecodecs.numcodecs.Zfp`` (it truncates the tolerance to ``int``), and not ZFPY's
  fixed-rate mode: with zfpy 1.0.1 ``mode_fixed_rate`` returned a wrong-sized stream and then
  aborted the process (``malloc(): invalid next size``) on these fields. The tolerance is
  searched up to 1 x range only: on t2m the ratio is still only ~18 there, and larger
  tolerances first give nonsense (tolerance above the data values) and then jump to ~490 with
  an all-zero reconstruction (PSNR about -8 dB). So ZFP cannot reach targets >= 30 on t2m and
  its nearest sensible point (tolerance = range) is reported.
* BitRound+Zstd: ``numcodecs.BitRound(keepbits)`` on the float32 values, then
  ``numcodecs.Zstd(--zstd-level)``; keepbits is an integer (0..23), so the nearest keepbits
  is reported.
* SZ3 anomaly / SPERR anomaly: the same codecs on data minus the training mean (float32, one
  chunk's shape; shared state like a model, not counted in the ratio); the mean is added
  back in float64 and the result cast to float32.

COIN++ (``--model``, optional): no bisection; each held-out chunk is encoded as one item
``(1, *chunk_shape)``; for every ``--coinpp-bits`` (quantizer refitted on the training split
via ``with_bits``; the model's own bit depth uses the model as is) and every
``--coinpp-steps`` (encode inner steps) one achieved point; plus the error-bounded mode
(``max_abs_error`` = ``--coinpp-bounds`` x range) at the model's bit depth and 3 steps.
COIN++ points are listed under the nearest target ratio (in log). Only tried on era5 so far.

Columns: achieved ratio, bits/value, PSNR = 20 log10(range / RMSE) with range = max - min of
the held-out data, RMSE and max abs error in data units, encode / decode MB/s of the raw
data in its source dtype (best of ``--repeats`` for classical codecs, one run for COIN++),
the knob value. Writes ``benchmarks/results/rd_compare_<dataset>.json`` and ``.png`` (PSNR vs
ratio, log x), ``<dataset>`` with ``:`` replaced by ``_`` (e.g. ``rd_compare_era5_t2m``).
The results folder is git-ignored.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# benchmarks/datasets.py (this script's folder is on sys.path when run as a script)
import datasets
import imagecodecs
import imagecodecs.numcodecs as icn
import numcodecs
import numpy as np
import zfpy

from coinpp_pipeline.metrics import bits_per_value, max_abs_error, psnr
from coinpp_pipeline.sources import SAMPLE_ERA5

TARGETS = [10, 30, 100, 300, 1000, 3000]
QUICK_TARGETS = [100, 1000]


# ------------------------------------------------------------------------ codec families
class Family:
    """A classical codec with one scalar knob.

    ``make(knob)`` -> numcodecs codec; ``lo``/``hi`` the knob's search interval;
    ``increasing``: the ratio grows with the knob; ``integer``: knob is an integer;
    ``anomaly``: compress data minus the training mean field.
    """

    def __init__(self, name: str, knob: str, make: Callable[[float], numcodecs.abc.Codec],
                 lo: float, hi: float, *, increasing: bool = True, integer: bool = False,
                 anomaly: bool = False) -> None:
        self.name, self.knob, self.make = name, knob, make
        self.lo, self.hi = lo, hi
        self.increasing, self.integer, self.anomaly = increasing, integer, anomaly


class BitRoundZstd(numcodecs.abc.Codec):
    codec_id = "bench.bitround_zstd"

    def __init__(self, keepbits: int, level: int) -> None:
        self.br = numcodecs.BitRound(keepbits=int(keepbits))
        self.z = numcodecs.Zstd(level=level)
        self.shape: tuple[int, ...] = ()

    def encode(self, buf: Any) -> bytes:
        a = np.ascontiguousarray(buf, dtype=np.float32)
        self.shape = a.shape
        return bytes(self.z.encode(self.br.encode(a)))

    def decode(self, buf: Any, out: Any = None) -> np.ndarray:
        raw = self.z.decode(buf)
        return np.frombuffer(raw, dtype=np.float32).reshape(self.shape)


def families(shape: tuple[int, ...], rng: float, zstd_level: int) -> list[Family]:
    def sz3(b: float) -> numcodecs.abc.Codec:
        return icn.Sz3(shape=shape, dtype="<f4", mode="abs", abs=float(b))

    def sperr(bpp: float) -> numcodecs.abc.Codec:
        return icn.Sperr(level=float(bpp), mode="bpp")

    def zfp(tol: float) -> numcodecs.abc.Codec:
        return numcodecs.ZFPY(mode=zfpy.mode_fixed_accuracy, tolerance=float(tol))

    return [
        Family("SZ3 abs", "abs", sz3, 1e-7 * rng, 10 * rng),
        Family("SPERR bpp", "bpp", sperr, 1e-4, 24.0, increasing=False),
        Family("ZFP tolerance", "tol", zfp, 1e-7 * rng, 1.0 * rng),
        Family("BitRound+Zstd", "keepbits", lambda k: BitRoundZstd(int(k), zstd_level), 0, 23,
               increasing=False, integer=True),
        Family("SZ3 abs anomaly", "abs", sz3, 1e-7 * rng, 10 * rng, anomaly=True),
        Family("SPERR bpp anomaly", "bpp", sperr, 1e-4, 24.0, increasing=False, anomaly=True),
    ]


# ------------------------------------------------------------------------ measuring
def encode_all(codec: numcodecs.abc.Codec, fields: list[np.ndarray]) -> list[bytes]:
    return [bytes(codec.encode(f)) for f in fields]


def measure(codec: numcodecs.abc.Codec, fields: list[np.ndarray], test: np.ndarray,
            mean: np.ndarray | None, repeats: int, raw_bytes: int) -> dict[str, Any]:
    enc_t, dec_t = [], []
    blobs: list[bytes] = []
    outs: list[np.ndarray] = []
    for _ in range(repeats):
        t = time.perf_counter()
        blobs = encode_all(codec, fields)
        enc_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        outs = [np.asarray(codec.decode(b)).reshape(test.shape[1:]) for b in blobs]
        dec_t.append(time.perf_counter() - t)
    rec = np.stack(outs)
    if mean is not None:
        rec = (rec.astype(np.float64) + mean).astype(np.float32)
    return point(test, rec.astype(np.float32), sum(len(b) for b in blobs), min(enc_t), min(dec_t),
                 raw_bytes)


def point(test: np.ndarray, rec: np.ndarray, nbytes: int, enc_s: float, dec_s: float,
          raw_bytes: int) -> dict[str, Any]:
    """``raw_bytes``: the held-out data in its source dtype (ratio numerator, MB/s basis)."""
    raw_mb = raw_bytes / 1e6
    err = rec.astype(np.float64) - test.astype(np.float64)
    return {"bytes": int(nbytes), "ratio": raw_bytes / nbytes, "bpv": bits_per_value(nbytes, test.size),
            "psnr": psnr(test, rec), "rmse": float(np.sqrt(np.mean(err**2))),
            "max_abs_err": max_abs_error(test, rec), "enc_MBps": raw_mb / enc_s, "dec_MBps": raw_mb / dec_s}


def search(fam: Family, fields: list[np.ndarray], raw_bytes: int, target: float, tol: float,
           max_iter: int) -> tuple[float, float, int]:
    """Bisect the knob for ``target`` ratio. Returns (knob, ratio, evaluations)."""
    cache: dict[float, float] = {}

    def ratio(k: float) -> float:
        if k not in cache:
            cache[k] = raw_bytes / sum(len(b) for b in encode_all(fam.make(k), fields))
        return cache[k]

    def err(k: float) -> float:
        return abs(math.log(ratio(k) / target))

    if fam.integer:
        ks = list(range(int(fam.lo), int(fam.hi) + 1))
        # monotone: bisect on integers, then take the best of the neighbours
        a, b = ks[0], ks[-1]
        while b - a > 1:
            m = (a + b) // 2
            if (ratio(m) < target) == fam.increasing:
                a = m
            else:
                b = m
        best = min((a, b), key=err)
        return float(best), ratio(best), len(cache)

    lo, hi = math.log(fam.lo), math.log(fam.hi)
    best = min((fam.lo, fam.hi), key=err)
    r_lo, r_hi = ratio(fam.lo), ratio(fam.hi)
    r_min, r_max = (r_lo, r_hi) if fam.increasing else (r_hi, r_lo)
    if target <= r_min or target >= r_max:
        return best, ratio(best), len(cache)
    for _ in range(max_iter):
        m = 0.5 * (lo + hi)
        k = math.exp(m)
        if err(k) < err(best):
            best = k
        if err(k) <= math.log1p(tol):
            break
        if (ratio(k) < target) == fam.increasing:
            lo = m
        else:
            hi = m
    return best, ratio(best), len(cache)


# ------------------------------------------------------------------------ COIN++
def coinpp_rows(model_path: str, train: np.ndarray, test: np.ndarray, bits_list: list[int],
                steps_list: list[int], rel_bounds: list[float], rng: float,
                raw_bytes: int, rate_weights: list[float] | None = None,
                grid_steps: list[int] | None = None,
                hybrid: list[tuple[float, float]] | None = None) -> list[dict]:
    import torch  # noqa: F401  (imported lazily: only needed with --model)

    from coinpp_pipeline import Model
    from coinpp_pipeline.grid_model import GridModel
    from coinpp_pipeline.model import with_bits

    base = Model.load(model_path)
    grid = isinstance(base, GridModel)
    print(f"COIN++: model {model_path} ({len(base.to_bytes())} B, "
          f"{'latent grid' if grid else f'{base.config.bits} bits'})", flush=True)
    # each held-out chunk as one item: (1, *chunk_shape)
    fields = [test[i : i + 1] for i in range(test.shape[0])]
    rows: list[dict] = []

    def run(model: Any, name: str, knob: dict, **kw: Any) -> None:
        t = time.perf_counter()
        blobs = [model.encode(f, **kw) for f in fields]
        enc_s = time.perf_counter() - t
        t = time.perf_counter()
        outs = [np.asarray(model.decode(b)).reshape(test.shape[1:]) for b in blobs]
        dec_s = time.perf_counter() - t
        p = point(test, np.stack(outs).astype(np.float32), sum(len(b) for b in blobs), enc_s, dec_s,
                  raw_bytes)
        p.update({"codec": name, "knob": knob, "model_bytes": len(model.to_bytes())})
        rows.append(p)
        print(f"  {name:<22} {knob}  ratio {p['ratio']:8.1f}  PSNR {p['psnr']:6.2f}  "
              f"maxerr {p['max_abs_err']:.4g}  enc {enc_s:.1f}s", flush=True)

    if grid:
        for steps in grid_steps or [base.config.encode_steps]:
            for lam in rate_weights or [base.config.rate_weight]:
                run(base, f"COIN++ grid l{lam:g} s{steps}", {"rate_weight": lam, "steps": steps},
                    steps=steps, rate_weight=lam)
        for lam, bpv in hybrid or []:
            run(base, f"COIN++ grid l{lam:g}+S{bpv:g}", {"rate_weight": lam, "steps": base.config.encode_steps,
                                                        "residual_bpv": bpv}, rate_weight=lam, residual_bpv=bpv)
        for rel in rel_bounds:
            run(base, f"COIN++ grid bound {rel:g}", {"steps": base.config.encode_steps, "rel_bound": rel,
                                                     "max_abs_error": rel * rng}, max_abs_error=rel * rng)
        return rows
    for bits in bits_list:
        t = time.perf_counter()
        model = base if bits == base.config.bits else with_bits(base, train, bits)
        if model is not base:
            print(f"  with_bits({bits}) refit {time.perf_counter() - t:.1f}s", flush=True)
        for steps in steps_list:
            run(model, f"COIN++ {bits}b s{steps}", {"bits": bits, "steps": steps}, steps=steps)
    for rel in rel_bounds:
        run(base, f"COIN++ bound {rel:g}", {"bits": base.config.bits, "steps": 3, "rel_bound": rel,
                                            "max_abs_error": rel * rng}, steps=3, max_abs_error=rel * rng)
    return rows


def _hybrid_point(text: str) -> tuple[float, float]:
    try:
        lam, bpv = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LAMBDA:BPV (e.g. 1:0.3), got {text!r}") from None
    return lam, bpv


# ------------------------------------------------------------------------ output
def print_table(name: str, targets: list[float], rows: list[dict], info: dict) -> None:
    raw = info["raw_dtype"]
    print()
    print(f"=== {name}: rate-distortion on {info['n_test']} held-out chunks {info['field_shape']}, "
          f"range {info['range']:.4g}; ratio vs {raw}, all stream bytes; "
          f"MB/s of raw {raw} ===")
    hdr = (f"{'target':>6} {'codec':<22} {'hit':>3} {'ratio':>8} {'bpv':>8} {'PSNR dB':>8} {'RMSE':>9} "
           f"{'maxerr':>9} {'enc MB/s':>9} {'dec MB/s':>9}  knob")
    print(hdr)
    for t in targets:
        for r in [r for r in rows if r["group"] == t]:
            knob = r["knob"]
            ks = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in knob.items())
            hit = "" if r.get("hit") is None else ("yes" if r["hit"] else "no")
            print(f"{t:>6g} {r['codec']:<22} {hit:>3} {r['ratio']:>8.1f} {r['bpv']:>8.4f} {r['psnr']:>8.2f} "
                  f"{r['rmse']:>9.4g} {r['max_abs_err']:>9.4g} {r['enc_MBps']:>9.2f} {r['dec_MBps']:>9.2f}  {ks}")
        print()
    print(f"shared state not in the ratios: training mean (anomaly rows) {info['mean_bytes']} B "
          f"as float32 (alone: PSNR {info['mean_psnr']:.2f} dB, max err {info['mean_maxerr']:.3g})"
          + (f"; COIN++ model file {info['model_bytes']} B (with_bits refits: see JSON "
             f"model_bytes)" if info.get("model_bytes") else ""))


def plot(path: Path, name: str, raw_dtype: str, targets: list[float], rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    names: list[str] = []
    for r in rows:
        base = r["series"]
        if base not in names:
            names.append(base)
    markers = "os^vD<>pPX*h"
    for i, n in enumerate(names):
        pts = sorted((r["ratio"], r["psnr"]) for r in rows if r["series"] == n and math.isfinite(r["psnr"]))
        if not pts:
            continue
        x, y = zip(*pts, strict=True)
        ls = "--" if "anomaly" in n else ("" if "bound" in n else "-")
        ax.plot(x, y, marker=markers[i % len(markers)], linestyle=ls or "none", label=n)
    for t in targets:
        ax.axvline(t, color="0.85", lw=0.8, zorder=0)
    ax.set_xscale("log")
    ax.set_xlabel(f"compression ratio vs {raw_dtype} (all bytes)")
    ax.set_ylabel("PSNR dB (range-normalised)")
    ax.set_title(f"{name}, held-out chunks")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=None,
                    help=f"one of {', '.join(datasets.NAMES)} (default era5:t2m)")
    ap.add_argument("--var", default=None, help="alias: --var V is --dataset era5:V")
    ap.add_argument("--data", default=None, help=f"era5 only: the files (default {SAMPLE_ERA5})")
    ap.add_argument("--train-days", type=int, default=None, help="era5 only: training files (default 5)")
    ap.add_argument("--targets", type=float, nargs="+", default=TARGETS)
    ap.add_argument("--quick", action="store_true", help=f"only target ratios {QUICK_TARGETS}")
    ap.add_argument("--tol", type=float, default=0.03, help="relative ratio tolerance of the bisection")
    ap.add_argument("--max-iter", type=int, default=40)
    ap.add_argument("--zstd-level", type=int, default=9)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default=None, help="saved COIN++ model (adds the COIN++ rows)")
    ap.add_argument("--coinpp-bits", type=int, nargs="+", default=[2, 3, 4, 5, 6, 8])
    ap.add_argument("--coinpp-steps", type=int, nargs="+", default=[3, 25])
    ap.add_argument("--rate-weights", type=float, nargs="+", default=[0.3, 1, 3, 10, 30, 100],
                    help="latent-grid models: rate weights (lambda) to encode with")
    ap.add_argument("--grid-steps", type=int, nargs="+", default=None,
                    help="latent-grid models: encoder steps (default: the model's)")
    ap.add_argument("--hybrid", type=_hybrid_point, nargs="+", default=None, metavar="LAMBDA:BPV",
                    help="latent-grid models: hybrid points, the network at rate weight LAMBDA plus SPERR "
                         "on its residual at BPV bits per value (GridModel.encode(residual_bpv=...))")
    ap.add_argument("--coinpp-bounds", type=float, nargs="*", default=[1e-1, 3e-2, 1e-2],
                    help="error-bounded COIN++ points, x range")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    targets: list[float] = list(QUICK_TARGETS) if args.quick else sorted(args.targets)
    name = args.dataset or (f"era5:{args.var}" if args.var else "era5:t2m")
    if args.var and args.dataset and args.dataset != f"era5:{args.var}":
        ap.error(f"--var {args.var} contradicts --dataset {args.dataset}")
    era5_kw: dict[str, Any] = {}
    if args.data is not None:
        era5_kw["era5_data"] = args.data
    if args.train_days is not None:
        era5_kw["era5_train_files"] = args.train_days
    if era5_kw and not name.startswith("era5:"):
        ap.error("--data / --train-days apply to era5:<var> datasets only")

    ds = datasets.load(name, **era5_kw)
    test = ds.test
    raw_bytes = ds.raw_bytes
    print(f"python {platform.python_version()}, numcodecs {numcodecs.__version__}, imagecodecs "
          f"{imagecodecs.__version__}, zfpy {importlib.metadata.version('zfpy')}", flush=True)
    print(f"{name}: {ds.description}", flush=True)
    print(f"{name}: train {ds.train.shape}, held-out {test.shape} (raw {ds.raw_dtype}, {raw_bytes} B); "
          f"targets {targets}", flush=True)
    rng = ds.range
    mean32 = ds.mean
    anom = (test.astype(np.float64) - mean32).astype(np.float32)
    mean_rec = np.broadcast_to(mean32, test.shape)
    info: dict[str, Any] = {
        "dataset": name, "description": ds.description, "raw_dtype": ds.raw_dtype,
        "raw_itemsize": ds.raw_itemsize, "raw_bytes": raw_bytes,
        "range": rng, "n_test": int(test.shape[0]), "field_shape": list(test.shape[1:]),
        "train_shape": list(ds.train.shape),
        "mean_bytes": ds.mean_state_bytes, "mean_psnr": psnr(test, mean_rec),
        "mean_maxerr": max_abs_error(test, mean_rec),
    }
    plain_fields = [np.ascontiguousarray(test[i]) for i in range(test.shape[0])]
    anom_fields = [np.ascontiguousarray(anom[i]) for i in range(test.shape[0])]

    rows: list[dict] = []
    for fam in families(test.shape[1:], rng, args.zstd_level):
        fields = anom_fields if fam.anomaly else plain_fields
        for target in targets:
            t = time.perf_counter()
            knob, _, n_eval = search(fam, fields, raw_bytes, target, args.tol, args.max_iter)
            p = measure(fam.make(knob), fields, test, mean32.astype(np.float64) if fam.anomaly else None,
                        args.repeats, raw_bytes)
            hit = abs(p["ratio"] / target - 1) <= 0.05
            p.update({"codec": fam.name, "series": fam.name, "group": target, "target": target, "hit": hit,
                      "knob": {fam.knob: int(knob) if fam.integer else knob}, "evals": n_eval,
                      "search_s": time.perf_counter() - t})
            rows.append(p)
            print(f"  {fam.name:<18} target {target:>6g}: ratio {p['ratio']:8.1f} ({'hit' if hit else 'MISS'}) "
                  f"PSNR {p['psnr']:6.2f}  {fam.knob}={knob:.4g}  ({n_eval} evals)", flush=True)

    if args.model:
        crow = coinpp_rows(args.model, ds.train, test, args.coinpp_bits, args.coinpp_steps,
                           args.coinpp_bounds, rng, raw_bytes, args.rate_weights, args.grid_steps,
                           args.hybrid)
        # the saved model's own file (with_bits refits have their own, slightly different sizes)
        info["model_bytes"] = Path(args.model).stat().st_size
        info["model"] = args.model
        for r in crow:
            r["group"] = min(targets, key=lambda t: abs(math.log(r["ratio"] / t)))
            r["target"] = None
            r["hit"] = None
            kn = r["knob"]
            kind = "COIN++ grid" if "grid" in r["codec"] else "COIN++"
            r["series"] = (f"{kind} error-bounded" if "rel_bound" in kn else f"{kind} + SPERR residual"
                           if "residual_bpv" in kn else f"{kind} steps {kn['steps']}")
        rows.extend(crow)
    else:
        print("(no --model: COIN++ rows skipped)")

    print_table(name, targets, rows, info)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"rd_compare_{name.replace(':', '_')}"
    png = out / f"{stem}.png"
    plot(png, name, ds.raw_dtype, targets, rows)
    result = {"argv": sys.argv, "args": vars(args), "targets": targets, "info": info, "rows": rows}
    js = out / f"{stem}.json"
    js.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {js} and {png}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
