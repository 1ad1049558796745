"""Benchmark: the seed-003 conv AE on real MNIST (first 8,000 train, last 2,000 validate), 10 epochs.

Reports validation BCE per epoch and seconds per epoch. The seed trained on the full 60k set
(235 steps/epoch at batch 256) and reached validation BCE 0.0756 after 10 epochs; with 8,000 images
and batch 32 an epoch is 250 steps, close to the seed's, so the curves compare step for step.

    .venv/bin/python benchmarks/bench_train_mnist.py [--data ../shared/data/mnist] [--epochs 10] [--out runs/mnist-conv]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from edgeae.train.data import DataSpec
from edgeae.train.trainer import TrainConfig, train

SEED_VAL_BCE = [0.1077, 0.0884, 0.0836, 0.0811, 0.0796, 0.0783, 0.0773, 0.0768, 0.0759, 0.0756]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    p.add_argument("--epochs", type=int, default=10)
    # Batch 32 gives 250 steps/epoch on 8,000 images: close to the seed's 235 steps/epoch on 60k.
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default="runs/mnist-conv")
    a = p.parse_args()
    if not Path(a.data).exists():
        print(f"shared MNIST not found at {a.data}; pass --data", file=sys.stderr)
        return 2
    res = train("conv", DataSpec("mnist", data=str(Path(a.data).resolve())), a.out, {"loss": "bce"},
                TrainConfig(epochs=a.epochs, batch_size=a.batch_size, progress=False), overwrite=True)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, train 8000 / val 2000, batch {a.batch_size}")
    print(f"{'epoch':>5} {'steps':>6} {'val BCE':>8} {'seed BCE':>9} {'val PSNR':>9} {'s/epoch':>8}")
    steps = -(-8000 // a.batch_size)
    for h in res.metrics["history"]:
        seed = SEED_VAL_BCE[h["epoch"] - 1] if h["epoch"] <= len(SEED_VAL_BCE) else float("nan")
        print(f"{h['epoch']:>5} {h['epoch'] * steps:>6} {h['val_loss']:>8.4f} {seed:>9.4f} {h['val_psnr']:>9.2f} {h['seconds']:>8.2f}")
    secs = sorted(h["seconds"] for h in res.metrics["history"])
    print(f"median seconds/epoch: {secs[len(secs) // 2]:.2f}; final validation BCE {res.metrics['final']['bce']:.4f} "
          f"(seed: 0.0756 after 2350 steps on 60k); run dir {res.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
