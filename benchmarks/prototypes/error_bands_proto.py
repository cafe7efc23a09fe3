"""Where a grid model's error sits, against SPERR on anomalies at the same ratio (session 24).

Encodes the first held-out chunk of an ERA5 dataset with ``Model.encode`` at one rate weight,
bisects SPERR's bits per value on the anomalies (chunk minus the training mean) to the same
ratio, and prints for both: PSNR, RMS error per 20-row latitude band (the last band is the
south-pole row alone on the 181-row grid), per field, per pole row, and the share of the error
power in zonal wavenumber bands. Found the msl network's south-pole row (≈ 10 % of the squared
error), which led to ``GridConfig.constant_rows``.

    python benchmarks/prototypes/error_bands_proto.py --model M --dataset era5:msl:7 0.07
"""
import argparse, sys
from pathlib import Path
import numpy as np, torch
from imagecodecs.numcodecs import Sperr
ROOT = Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import datasets  # noqa: E402
from coinpp_pipeline.model import Model  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--dataset", default="era5:msl:7")
ap.add_argument("rate_weight", type=float)
a = ap.parse_args()
torch.set_num_threads(2)
d = datasets.load(a.dataset)
x = d.test_chunks[0].astype(np.float64)
m = Model.from_bytes(open(a.model, "rb").read())
blob = m.encode(d.test_chunks[0], rate_weight=a.rate_weight)
ratio = x.size * d.raw_itemsize / len(blob)


def report(name: str, rec: np.ndarray, nbytes: int) -> None:
    e = (rec - x).reshape(-1, *x.shape[-2:])
    psnr = 20 * np.log10(d.range) - 10 * np.log10(np.mean(e**2))
    bands = [np.sqrt((e[:, i : i + 20] ** 2).mean()) for i in range(0, e.shape[1], 20)]
    power = np.abs(np.fft.rfft(e, axis=2)) ** 2
    shares = [power[..., lo:hi].sum() / power.sum() for lo, hi in ((0, 4), (4, 16), (16, 48), (48, None))]
    print(f"{name}: {x.size * d.raw_itemsize / nbytes:.1f}x  PSNR {psnr:.2f}  RMS {np.sqrt((e**2).mean()):.2f}")
    print("  RMS per 20-row band", " ".join(f"{v:.1f}" for v in bands))
    print("  RMS per field      ", " ".join(f"{v:.1f}" for v in np.sqrt((e**2).mean(axis=(1, 2)))))
    for r in (0, e.shape[1] - 1):
        print(f"  row {r}: RMS {np.sqrt((e[:, r] ** 2).mean()):.1f}, share of the squared error "
              f"{(e[:, r] ** 2).sum() / (e**2).sum():.3f}")
    print("  zonal wavenumber power share 0-3 / 4-15 / 16-47 / 48+", " ".join(f"{v:.2f}" for v in shares))
    r = rec.reshape(e.shape)
    exact, ring = r.copy(), r.copy()
    xs = x.reshape(e.shape)
    for row, ring_row in ((0, 1), (e.shape[1] - 1, e.shape[1] - 2)):
        exact[:, row] = xs[:, row]
        ring[:, row] = r[:, ring_row].mean(axis=1, keepdims=True)
    for what, alt in (("true pole rows written in", exact), ("pole rows = mean of the decoded ring next to them", ring)):
        p2 = 20 * np.log10(d.range) - 10 * np.log10(np.mean((alt - xs) ** 2))
        print(f"  {what}: PSNR {p2:.2f} ({p2 - psnr:+.2f})")


report(f"COIN++ lambda {a.rate_weight}", m.decode(blob).astype(np.float64), len(blob))
anom = (d.test_chunks[0] - d.mean).astype(np.float32)
lo, hi = 1e-3, 4.0
for _ in range(40):  # SPERR's bits per value at the same ratio
    mid = (lo * hi) ** 0.5
    if x.size * d.raw_itemsize / len(Sperr(mode="bpp", level=mid).encode(anom)) > ratio:
        lo = mid
    else:
        hi = mid
codec = Sperr(mode="bpp", level=(lo * hi) ** 0.5)
sb = codec.encode(anom)
report("SPERR on anomalies", codec.decode(sb).reshape(anom.shape).astype(np.float64) + d.mean, len(sb))
