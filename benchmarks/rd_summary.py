"""Summarise rd_compare results: each COIN++ point against SPERR / SPERR-on-anomalies (and
every other classical codec) at the same compression ratio.

    python benchmarks/rd_summary.py benchmarks/results/rd_compare_era5_t2m.json [...]

The classical codecs were bisected to the target ratios; their PSNR at a COIN++ point's
ratio is interpolated linearly in log(ratio) between the two neighbouring achieved points
(no extrapolation: outside their range the column shows "-"). Prints a markdown table.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def interp(points: list[tuple[float, float]], ratio: float) -> float | None:
    pts = sorted(points)
    for (r0, p0), (r1, p1) in zip(pts, pts[1:], strict=False):
        if r0 <= ratio <= r1 and r1 > r0:
            w = math.log(ratio / r0) / math.log(r1 / r0)
            return p0 + w * (p1 - p0)
    return None


def _cell(v: float | None, own: float) -> str:
    return "-" if v is None else f"{v:.2f} ({own - v:+.2f})"


def summarise(path: Path) -> list[str]:
    res = json.loads(path.read_text())
    rows = res["rows"]
    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if not r["codec"].startswith("COIN++"):
            series.setdefault(r["codec"], []).append((r["ratio"], r["psnr"]))
    name = res["info"].get("dataset", path.stem.replace("rd_compare_", ""))
    out = [f"### {name}", "", "| COIN++ point | ratio | PSNR dB | SPERR | SPERR anomaly | best other classical |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        if not r["codec"].startswith("COIN++"):
            continue
        sp = interp(series.get("SPERR bpp", []), r["ratio"])
        sa = interp(series.get("SPERR bpp anomaly", []), r["ratio"])
        others = {k: interp(v, r["ratio"]) for k, v in series.items() if not k.startswith("SPERR")}
        best = max(((v, k) for k, v in others.items() if v is not None), default=None)

        out.append(f"| {r['codec']} | {r['ratio']:.1f} | {r['psnr']:.2f} | {_cell(sp, r['psnr'])} | "
                   f"{_cell(sa, r['psnr'])} | "
                   + ("-" if best is None else f"{best[1]} {best[0]:.2f}") + " |")
    return out


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print("\n".join(summarise(Path(p))))
        print()
