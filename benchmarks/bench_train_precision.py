"""Benchmark: `edgeae train --precision bf16` against fp32, side by side: the same run (family, data, seed,
steps) twice at once, one thread each, then the seconds per step and the validation loss / PSNR / bpp of each.

bf16 runs the convolutions of g_a and g_s under bfloat16 autocast (float32 weights, Adam moments and
accumulation; the entropy models and rates stay float32). On a CPU with AMX / AVX-512-BF16 (Sapphire Rapids
and later) that is about 3x fewer seconds per step; the question this answers is what it costs in quality
at an equal number of steps. Both runs are validated and exported in float32.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_train_precision.py                       # photos/train
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_train_precision.py --family codec --steps 1500

Defaults: the issue-14 recipe (64/128 channels, stride 16, 320 crops, batch 2, Adam 4e-4 cosine) at lambda
0.007 on ../shared/data/photos (train / val); without it, scikit-image's photos (a smoke run, not a figure).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "photos"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="hyperprior")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lmbda", type=float, default=0.007)
    p.add_argument("--crop", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--photos", default=str(PHOTOS), help="a folder with train/ and val/ (else scikit-image's)")
    p.add_argument("--out", default="runs/precision")
    a = p.parse_args()
    photos = Path(a.photos)
    data = (["--data", str(photos / "train"), "--val-data", str(photos / "val")] if (photos / "train").is_dir()
            else ["--crops-per-image", "16"])
    extra = ["--set", "qat=false"] if a.family == "hyperprior" else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = {}
    for prec in ("fp32", "bf16"):
        run = Path(a.out) / prec
        cmd = [sys.executable, "-m", "edgeae", "train", "--model", a.family, "--dataset", "images", *data,
               "--color", "rgb", "--crop", str(a.crop), "--val-crop", "256", "--channels", "64", "--latent", "128",
               "--set", "downsamplings=4", *extra, "--lmbda", str(a.lmbda), "--batch-size", str(a.batch_size),
               "--lr", "4e-4", "--lr-decay", "cosine", "--epochs", "100000", "--max-steps", str(a.steps),
               "--threads", "1", "--precision", prec, "--no-progress", "--force", "--out", str(run)]
        procs[prec] = (run, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                             text=True), time.perf_counter())
    rows = {}
    for prec, (run, proc, t0) in procs.items():
        out, _ = proc.communicate()
        if proc.returncode:
            print(out[-2000:], file=sys.stderr)
            return proc.returncode
        m = json.loads((run / "metrics.json").read_text())
        rows[prec] = {"s_per_step": m["seconds"] / m["steps"], "wall_s": time.perf_counter() - t0, **m["final"]}
    print(f"{a.family} lambda {a.lmbda}, {a.steps} steps, crop {a.crop}, batch {a.batch_size}, 1 thread each, "
          f"both at once; validation in float32 ({'photos/val' if data[0] == '--data' else 'scikit-image'})")
    print(f"{'precision':>9} {'s/step':>7} {'val loss':>9} {'PSNR':>7} {'bpp':>7}")
    for prec, r in rows.items():
        print(f"{prec:>9} {r['s_per_step']:7.3f} {r['loss']:9.4f} {r['psnr']:7.2f} {r.get('bpp', float('nan')):7.4f}")
    print(f"speed-up bf16: {rows['fp32']['s_per_step'] / rows['bf16']['s_per_step']:.2f}x per step")
    json.dump(rows, open(Path(a.out) / "precision.json", "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
