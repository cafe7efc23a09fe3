"""Held-out check of a grid model through Model.encode / decode_many (real chunk bytes, one
chunk per test chunk of the dataset), with the gap to SPERR / SPERR-on-anomalies taken from a
stored rd_compare result (interpolated in log ratio, as rd_summary.py does).

    python benchmarks/prototypes/grid_eval_proto.py --model M --dataset era5:t2m 1 10
    (positional: rate weights, optionally LAM,STEPS; --lr overrides the encoder learning rate)
"""
import argparse, json, sys, time
from pathlib import Path
import numpy as np, torch
ROOT = Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import datasets  # noqa: E402
from rd_summary import interp  # noqa: E402
from coinpp_pipeline.model import Model  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--dataset", default="era5:t2m")
ap.add_argument("--ref", default=None, help="rd_compare json (default benchmarks/results/rd_compare_<dataset>.json)")
ap.add_argument("--lr", type=float, default=None, help="override the model's encode_lr")
ap.add_argument("--noise-fraction", type=float, default=None, help="override the model's encode_noise_fraction")
ap.add_argument("--beta2", type=float, default=None, help="encoder Adam beta2 (default torch's 0.999)")
ap.add_argument("--tau", type=float, nargs=2, default=None, help="override grid_model.SGA_TAU")
ap.add_argument("settings", nargs="+")
a = ap.parse_args()
torch.set_num_threads(2)
d = datasets.load(a.dataset)
m = Model.from_bytes(open(a.model, "rb").read())
if a.lr is not None:
    import dataclasses
    m.config = dataclasses.replace(m.config, encode_lr=a.lr)
import coinpp_pipeline.grid_model as gm  # noqa: E402
if a.noise_fraction is not None:
    import dataclasses
    m.config = dataclasses.replace(m.config, encode_noise_fraction=a.noise_fraction)
if a.tau is not None:
    gm.SGA_TAU = tuple(a.tau)
if a.beta2 is not None:
    _adam = torch.optim.Adam
    torch.optim.Adam = lambda params, lr: _adam(params, lr=lr, betas=(0.9, a.beta2))  # type: ignore
ref = Path(a.ref or ROOT / f"benchmarks/results/rd_compare_{a.dataset.replace(':', '_')}.json")
series = {}
for r in json.loads(ref.read_text())["rows"]:
    series.setdefault(r["codec"], []).append((r["ratio"], r["psnr"]))
for s in a.settings:
    lam, steps = (float(s.split(",")[0]), int(s.split(",")[1])) if "," in s else (float(s), None)
    t = time.time()
    blobs = [m.encode(c, rate_weight=lam, steps=steps) for c in d.test_chunks]
    te = time.time() - t
    rec = np.concatenate([b.reshape(-1) for b in m.decode_many(blobs)])
    ref_x = np.concatenate([c.reshape(-1) for c in d.test_chunks]).astype(np.float64)
    ok = np.isfinite(ref_x)
    psnr = 20 * np.log10(d.range) - 10 * np.log10(np.mean((rec[ok] - ref_x[ok]) ** 2))
    ratio = d.raw_bytes / sum(map(len, blobs))
    sp, sa = interp(series.get("SPERR bpp", []), ratio), interp(series.get("SPERR bpp anomaly", []), ratio)
    f = lambda v: "-" if v is None else f"{psnr - v:+.2f}"  # noqa: E731
    print(f"lam {lam} steps {m.config.encode_steps if steps is None else steps}: ratio {ratio:.1f} psnr {psnr:.2f}  "
          f"vs SPERR {f(sp)}  vs SPERR-anom {f(sa)}  encode {te:.1f}s ({d.raw_bytes / te / 1e6:.3f} MB/s)", flush=True)
    coders = m.coders() if hasattr(m, "coders") else ()
    if len(coders) > 1:  # the same chunks' latents under each coder (tables, sets, ARM)
        import constriction  # noqa: E402
        from coinpp_pipeline.bitstream import unpack  # noqa: E402
        from coinpp_pipeline.latent_grid import GridEntropyModel  # noqa: E402

        def coder_bytes(t, items):
            if isinstance(t, GridEntropyModel):
                return len(t.compress(items))
            enc = constriction.stream.queue.RangeEncoder()
            t.encode_to(enc, items)
            return 4 * len(enc.get_compressed())

        rest, per = 0, []
        for b, c in zip(blobs, d.test_chunks):
            g = unpack(b).sections.get("G")
            if g is None:
                rest += len(b)
                continue
            n = int(np.prod(c.shape[:-2]))
            items = m.decompress_grids(g, n, m.config.level_shapes(c.shape[-2:]))
            rest += len(b) - len(g)
            per.append([coder_bytes(t, items) for t in coders])
        per_a = np.array(per)
        n_tab = 1 + len(m.table_sets)
        rows = {"pooled tables only": per_a[:, 0].sum(), "tables + sets": per_a[:, :n_tab].min(1).sum()}
        if m.arm is not None:
            rows["ARM only"] = per_a[:, -1].sum()
            rows["all coders"] = per_a.min(1).sum()
        used = sorted(set(np.argmin(per_a, 1).tolist()))
        for name, gbytes in rows.items():
            r0 = d.raw_bytes / (rest + gbytes)
            print(f"    {name}: ratio {r0:.1f} (vs SPERR-anom {f(interp(series.get('SPERR bpp anomaly', []), r0))}); "
                  f"latent bytes {gbytes}", flush=True)
        print(f"    coders used {used} (0 = pooled tables, last = ARM if any); other bytes {rest}", flush=True)
    t = time.time(); m.decode_many(blobs); print(f"    decode {time.time() - t:.2f}s", flush=True)
