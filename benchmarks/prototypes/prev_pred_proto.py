"""The previous field as a predictor, no retraining: in a chunk of consecutive fields, field i
(i >= 1) gets one more synthesis component besides the model's basis — the previous field's
*decoded* anomaly with its projection on the basis removed, scaled to unit RMS — whose
coefficient the encoder fits with the latents (stored here as float16, 2 bytes per field).
A decoder has that field before it needs it (items decoded in order). Fields are encoded one
after the other (the model's item-context ARM as rate term when it has one, as in the library).

Bytes: the G section (model.compress_grids over the chunk's items), the P section of the
basis coefficients (the model's coefficient coder, as the library writes it), 2 B per
predicted field, 20 B of chunk header + CRC. PSNR from the reconstructions a decoder makes.

    python benchmarks/prototypes/prev_pred_proto.py --model M --dataset era5:t2m:7 --lams 0.3 1 [--plain]
"""
import argparse, json, sys, time
from pathlib import Path
import numpy as np, torch
ROOT = Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import datasets  # noqa: E402
from rd_summary import interp  # noqa: E402
from coinpp_pipeline.basis_coding import step_code  # noqa: E402
from coinpp_pipeline.grid_model import COEFFS_CODED, project_on_basis  # noqa: E402
from coinpp_pipeline.model import Model  # noqa: E402

HEADER = 20  # chunk format 2 header + CRC (tests/test_bitstream.py)

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--dataset", default="era5:t2m:7")
ap.add_argument("--lams", nargs="+", type=float, default=[0.3, 1])
ap.add_argument("--plain", action="store_true", help="also without the predictor (same accounting)")
ap.add_argument("--steps", type=int, default=None, help="encoder steps (default the model's)")
a = ap.parse_args()
torch.set_num_threads(2)
d = datasets.load(a.dataset)
m = Model.from_bytes(open(a.model, "rb").read())
if a.steps is not None:
    import dataclasses
    m.config = dataclasses.replace(m.config, encode_steps=a.steps)
net = m.network
B0 = net.basis.clone()
k = B0.shape[0]
series: dict = {}
ref = ROOT / f"benchmarks/results/rd_compare_{a.dataset.replace(':', '_')}.json"
for r in json.loads(ref.read_text())["rows"]:
    series.setdefault(r["codec"], []).append((r["ratio"], r["psnr"]))


def encode_chunk(x: np.ndarray, lam: float, predict: bool) -> tuple[int, np.ndarray]:
    """Fields x (T, H, W) -> (bytes, decoded fields (T, H, W) in original units)."""
    hw = (x.shape[1], x.shape[2])
    finite = np.isfinite(x)
    normed = m._normalise(x)
    e = step_code(lam, hw[0] * hw[1])
    prev_grids, prev_rec = None, None
    grids_all, q_all, recs, extra = [], [], [], 0
    item_ctx = m.config.encode_rate == "arm" and m.arm is not None and m.arm.item_context
    for i in range(x.shape[0]):
        p = None
        if predict and prev_rec is not None:
            p = prev_rec - torch.einsum("bk,khw->bhw", project_on_basis(prev_rec[None], B0), B0)[0]
            p = p / p.pow(2).mean().sqrt().clamp_min(1e-12)
            net.basis = torch.cat([B0, p[None]])
        try:
            grids, coeffs = m.fit_grids_coeffs(normed[i:i + 1], finite[i:i + 1], m.config.encode_steps, lam,
                                               prev_grids if item_ctx else None)
        finally:
            net.basis = B0
        q = m.coeff_coder.quantize(coeffs[:, :k], e)
        cq = m.coeff_coder.dequantize(q, e)
        if p is not None:
            c16 = coeffs[:, k:].astype(np.float16).astype(np.float32)
            cq = np.concatenate([cq, c16], axis=1)
            extra += 2
            net.basis = torch.cat([B0, p[None]])
        with torch.no_grad():
            zs = [torch.from_numpy(g.astype(np.float32)) for g in grids]
            rec = net(zs, m._climatology(), hw, torch.from_numpy(cq))
        net.basis = B0
        prev_rec, prev_grids = rec[0], grids
        grids_all.append(grids)
        q_all.append(q)
        recs.append(rec[0].numpy().astype(np.float64) * float(m.std[0]) + m.mean.astype(np.float64))
    g_bytes = len(m.compress_grids([[g[0] for g in grids] for grids in grids_all]))
    p_bytes = 1 + len(m.coeff_coder.compress(np.concatenate(q_all), e))
    assert COEFFS_CODED == 1
    return HEADER + g_bytes + p_bytes + extra, np.stack(recs)


for lam in a.lams:
    for predict in ([False, True] if a.plain else [True]):
        t = time.time()
        total, se, n = 0, 0.0, 0
        for c in d.test_chunks:
            x = c.astype(np.float64).reshape(-1, *c.shape[-2:])
            nbytes, rec = encode_chunk(x, lam, predict)
            ok = np.isfinite(x)
            total += nbytes
            se += float(((rec[ok] - x[ok]) ** 2).sum())
            n += int(ok.sum())
        psnr = 20 * np.log10(d.range) - 10 * np.log10(se / n)
        ratio = d.raw_bytes / total
        sa = interp(series.get("SPERR bpp anomaly", []), ratio)
        gap = "-" if sa is None else f"{psnr - sa:+.2f}"
        print(f"lam {lam} {'predictor' if predict else 'plain    '}: ratio {ratio:.1f} psnr {psnr:.2f} "
              f"vs SPERR-anom {gap}  bytes {total}  ({time.time() - t:.0f} s)", flush=True)
