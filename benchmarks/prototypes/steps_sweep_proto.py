import sys, time, numpy as np, torch
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import datasets
from coinpp_pipeline.model import Model
torch.set_num_threads(2)
d = datasets.load("era5:t2m")
m = Model.from_bytes(open(str(ROOT / "benchmarks/results/models") + "/eaf46ec551ed8b076d861aee26f17833a48be703483796a2cddeeeeef55f50e9.coinpp","rb").read())
for arg in sys.argv[1:]:
    lam, steps = float(arg.split(",")[0]), int(arg.split(",")[1])
    t = time.time()
    blobs = [m.encode(c, rate_weight=lam, steps=steps) for c in d.test_chunks]
    te = time.time() - t
    rec = np.stack(m.decode_many(blobs))
    psnr = 20*np.log10(d.range) - 10*np.log10(np.mean((rec - d.test.astype(np.float64))**2))
    print(f"lam {lam} steps {steps} ratio {d.raw_bytes/sum(map(len, blobs)):.1f} psnr {psnr:.2f} encode {te:.0f}s = {d.raw_bytes/te/1e6:.3f} MB/s", flush=True)
