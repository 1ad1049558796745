"""One lambda, two families: how many bits the hyperprior saves over the factorized codec at equal PSNR.

A curve per family (benchmarks/bench_hyperprior.py) needs five runs a family; a question such as "does the gap
open at Balle et al.'s sizes?" can be asked of one pair first. Both bundles are measured through real payloads
on the whole photos/val images (fp32 encoders; `--int8` adds the int8 ones). The two points rarely have equal
PSNR, so the hyperprior's rate is moved to the codec's PSNR along a reference curve's local slope
(d ln(bpp) / d PSNR, from `--slope` points measured the same way, e.g. a five-point hyperprior curve of
bench_hyperprior.py's JSON); the raw ratio is printed beside it. Also prints each bundle's files in MB, which
decides what fits the zoo's 25 MB (docs/MODELS.md).

Session 12's question (docs/HYPERPRIOR.md, "Session 12"), both families at Balle et al.'s sizes, lambda 0.013:

    LAMBDAS=0.013 CHANNELS=128 LATENT=192 STEPS=20000 VAL_EVERY=30 OUT=runs/balle \
      HYPER_SET="--set qat=false --set hyper_latent_channels=128 --set hyper_channels=128" \
      bash benchmarks/gpu_pairs.sh
    for r in c_0.013 h_0.013; do edgeae export runs/balle/$r --int8 --no-speed --out runs/balle-bundles/$r; done
    OMP_NUM_THREADS=1 python benchmarks/bench_pair.py --hyper runs/balle-bundles/h_0.013 \
        --codec runs/balle-bundles/c_0.013 --slope \
        0.2276:25.262,0.2891:25.628,0.4296:26.261,0.6170:26.530,0.7374:26.894
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hyperprior import ROOT, load_images, rd_point  # noqa: E402


def slope_at(points: list[tuple[float, float]], at_psnr: float) -> float:
    """d ln(bpp) / d PSNR of a curve of (bpp, psnr) points, between the two points around `at_psnr` (the end
    segment outside the curve)."""
    pts = sorted(points, key=lambda p: p[1])
    if len(pts) < 2:
        raise SystemExit("bench_pair: --slope needs at least two points")
    i = int(np.clip(np.searchsorted([p[1] for p in pts], at_psnr), 1, len(pts) - 1))
    (b0, q0), (b1, q1) = pts[i - 1], pts[i]
    return (math.log(b1) - math.log(b0)) / (q1 - q0)


def slope_points(arg: str, family: str) -> list[tuple[float, float]]:
    """bpp:psnr,... or a bench_hyperprior / bench_encoder_search JSON file (its `family` curve)."""
    if Path(arg).is_file():
        curves = json.loads(Path(arg).read_text())["curves"][family]
        curve = curves["plain"] if isinstance(curves, dict) else curves
        return [(p["bpp"], p["psnr"]) for p in curve]
    return [tuple(float(v) for v in p.split(":")) for p in arg.split(",")]  # type: ignore[misc]


def mb(bundle: str) -> dict[str, float]:
    files = {p.name: p.stat().st_size / 1e6 for p in sorted(Path(bundle).iterdir()) if p.is_file()}
    return {**files, "total": sum(files.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hyper", required=True, help="the hyperprior bundle")
    ap.add_argument("--codec", required=True, help="the factorized codec bundle, same lambda and recipe")
    ap.add_argument("--slope", required=True, help="reference curve for the PSNR correction: bpp:psnr,... or a "
                    "JSON with curves.hyperprior (bench_hyperprior.py --json, bench_encoder_search.py)")
    ap.add_argument("--int8", action="store_true", help="also measure the int8 encoders")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "photos" / "val"))
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    images = load_images(Path(a.data))
    print(f"{len(images)} photographs from {a.data} (RGB, own sizes)")
    ref = slope_points(a.slope, "hyperprior")
    rows = []
    for prec in ("fp32", "int8") if a.int8 else ("fp32",):
        h, c = rd_point(a.hyper, images, prec), rd_point(a.codec, images, prec)
        s = slope_at(ref, c["psnr"])
        moved = h["bpp"] * math.exp(s * (c["psnr"] - h["psnr"]))  # the hyperprior's rate at the codec's PSNR
        row = {"precision": prec, "hyper": h, "codec": c, "slope_ln_bpp_per_db": s,
               "raw": h["bpp"] / c["bpp"] - 1, "equal_psnr": moved / c["bpp"] - 1}
        rows.append(row)
        print(f"  {prec}: hyperprior bpp {h['bpp']:.4f} PSNR {h['psnr']:.3f} dB | codec bpp {c['bpp']:.4f} PSNR "
              f"{c['psnr']:.3f} dB | bits {row['raw']:+.1%} at {h['psnr'] - c['psnr']:+.3f} dB; at equal PSNR "
              f"{row['equal_psnr']:+.1%} (slope {s:.3f} ln(bpp)/dB)")
    sizes = {b: mb(b) for b in (a.hyper, a.codec)}
    for b, m in sizes.items():
        print(f"  {Path(b).name} files: " + ", ".join(f"{k} {v:.2f}" for k, v in m.items() if k != "total")
              + f" = {m['total']:.2f} MB")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "sizes_mb": sizes}, indent=2))


if __name__ == "__main__":
    main()
