import sys, numpy as np, imagecodecs.numcodecs as icn
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import datasets
name = sys.argv[1] if len(sys.argv) > 1 else "era5:t2m"
d = datasets.load(name)
tr = d.train.astype(np.float64); te = d.test.astype(np.float64)
mean = tr.mean(0)
A = (tr - mean).reshape(len(tr), -1)
U, S, Vt = np.linalg.svd(A, full_matrices=False)
rng = d.range
def psnr(x, y): return 20*np.log10(rng) - 10*np.log10(np.mean((x-y)**2))
ta = (te - mean).reshape(len(te), -1)
for k in [0,1,2,4,8,12,16]:
    B = Vt[:k]
    c = ta @ B.T
    rec = c @ B
    print(k, "proj psnr %.2f" % psnr(ta, rec), "train-energy %.3f" % ((S[:k]**2).sum()/(S**2).sum()))
raw = te[0].size*4
def sperr_at(res, ratio, extra):
    # bisect bpp so total bytes = raw/ratio
    target = raw/ratio - extra
    lo, hi = 1e-4, 8
    for _ in range(30):
        mid = (lo*hi)**0.5
        b = icn.Sperr(level=mid, mode="bpp").encode(res.astype(np.float32))
        if len(b) > target: hi = mid
        else: lo = mid
    c = icn.Sperr(level=lo, mode="bpp"); b = c.encode(res.astype(np.float32))
    return len(b), c.decode(b).reshape(res.shape)
for ratio in [100, 300, 1000]:
    for k in [0, 2, 4, 8, 16]:
        B = Vt[:k]; tot = 0; err = 0
        for i in range(len(te)):
            c = ta[i] @ B.T
            c16 = c.astype(np.float16).astype(np.float64)
            pred = (c16 @ B).reshape(te[i].shape) + mean
            n, r = sperr_at(te[i] - pred, ratio, 2*k)
            rec = pred + r
            err += np.sum((rec - te[i])**2); tot += n + 2*k
        print(ratio, k, "ratio %.1f psnr %.2f" % (raw*len(te)/tot, 20*np.log10(rng) - 10*np.log10(err/te.size)))
