"""Prototype: a finer (or coarser) latent quantization step without retraining, with entropy
table sets counted at that step, to lift a model's quality ceiling at low rate weights.

    python benchmarks/prototypes/step_sets_proto.py --model M --dataset hadcm3 --step 0.5 \
        --lams 0.01 0.03 [--table-fields 80]
Saves benchmarks/results/models/<sha>.coinpp (gain x step, Laplace scales and locations / step,
the model's pooled tables dropped for the new sets only) and prints its path; evaluate with
grid_eval_proto.py.
"""
import argparse, math, sys
from pathlib import Path
import numpy as np, torch
ROOT = Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import datasets  # noqa: E402
from coinpp_pipeline.grid_model import GridModel, fit_table_sets  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--dataset", required=True)
ap.add_argument("--step", type=float, required=True)
ap.add_argument("--lams", type=float, nargs="+", required=True)
ap.add_argument("--table-fields", type=int, default=None)
ap.add_argument("--lr", type=float, default=None, help="encoder learning rate of the new model (session 14: "
                "scale it by 1/step for the same optimisation in output space)")
a = ap.parse_args()
torch.set_num_threads(2)
m = GridModel.load(a.model)
m = GridModel(m.config, m.network, m.mean, float(m.std[0]), m.tables, m.report)  # drop old sets
if a.lr is not None:
    m = m.with_encoding(encode_lr=a.lr)
with torch.no_grad():
    m.network.gain.mul_(a.step)
    m.network.log_scale.add_(-math.log(a.step))
    if m.network.loc is not None:
        m.network.loc.div_(a.step)
train = datasets.load(a.dataset).train
train = train.reshape(-1, *train.shape[-2:])
if a.table_fields and a.table_fields < train.shape[0]:
    train = train[np.linspace(0, train.shape[0] - 1, a.table_fields).round().astype(int)]
m = fit_table_sets(m, train, a.lams, log=print)
out = ROOT / "benchmarks/results/models" / f"{m.sha256}.coinpp"
m.save(str(out))
print(out)
