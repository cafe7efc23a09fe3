"""Held-out check of a grid model through Model.encode / decode_many (real chunk bytes, one
chunk per test chunk of the dataset), with the gap to SPERR / SPERR-on-anomalies taken from a
stored rd_compare result (interpolated in log ratio, as rd_summary.py does).

    python benchmarks/prototypes/grid_eval_proto.py --model M --dataset era5:t2m 1 10
    (positional: rate weights, optionally LAM,STEPS; --lr overrides the encoder learning rate)

``--seq-arm`` (session 20; a model whose ARM has the item context, a dataset with several
fields per chunk, e.g. ``era5:t2m:7``): each chunk's fields are encoded one after the other,
the encoder's rate term being that ARM with the previous field's final latents as its item
context (instead of the tables' Laplace proxy), so the encoder sees what repeating the
previous field's latents saves.
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
ap.add_argument("--seq-arm", action="store_true", help="sequential encoder with the item-context ARM's rate")
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
if a.seq_arm:
    import functools
    import torch.nn.functional as F  # noqa: N812
    from coinpp_pipeline import latent_arm as la
    if m.arm is None or not m.arm.item_context:
        sys.exit("--seq-arm needs a model whose ARM has the item context")

    def item_arm_bits(prev, noisy, rounded):
        arm, levels = m.arm, m.arm.levels
        total = torch.zeros(noisy[0].shape[0])
        for lv, z in enumerate(noisy):
            with torch.no_grad():
                f = la._torch_features(rounded, lv, levels)
                h, w = z.shape[-2:]
                pz = torch.zeros_like(rounded[lv]) if prev is None else torch.from_numpy(prev[lv]).float()
                qp = F.pad(pz, (1, 1, 1, 1))
                pc = [qp[:, 1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w] for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
                pc.append(torch.full_like(pz, 0.0 if prev is None else 1.0))
                x = torch.cat([f[..., :-levels], torch.stack(pc, -1), f[..., -levels:]], -1)
                for j, (wt, b) in enumerate(arm._float_layers):
                    x = x @ wt + b
                    if j < len(arm.weights) - 1:
                        x = torch.relu(x)
            mu = x[..., 0].clamp(-arm.max_symbol, arm.max_symbol)
            total = total + la.laplace_bits(z, mu, x[..., 1], arm.max_symbol).flatten(1).sum(1)
        return total

    def seq_fit(normed, valid, steps, lam):
        prev, gs, cs = None, [], []
        for t in range(normed.shape[0]):
            m.network.rate_bits = functools.partial(item_arm_bits, prev)
            g, c = gm.GridModel.fit_grids_coeffs(m, normed[t : t + 1], valid[t : t + 1], steps, lam)
            gs.append(g); cs.append(c); prev = g
        del m.network.rate_bits
        return [np.concatenate([g[lv] for g in gs]) for lv in range(m.config.levels)], np.concatenate(cs)

    m.fit_fields_coeffs = seq_fit
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
