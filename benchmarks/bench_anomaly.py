"""Benchmark: anomaly detection by reconstruction error (seed 001, section 4.3) on the shared MNIST.

One-class setup per normal digit d: the seed-003 conv AE is trained only on the d's among the first 8,000
images, exported, and `edgeae.evaluate.anomaly` scores the last 2,000 images through real payloads
(encode -> bytes -> decode, as `edgeae score` does). ROC AUC of held-out d's against every other digit,
and the fraction of each flagged at the 99th percentile of the normal training scores.

    .venv/bin/python benchmarks/bench_anomaly.py [--normal 0,1,7] [--epochs 20] [--mnist ../shared/data/mnist]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np


def main() -> int:
    from edgeae.bundling.build import ExportOptions, export_run
    from edgeae.evaluate import anomaly
    from edgeae.train.data import Dataset, DataSpec, load_dataset
    from edgeae.train.trainer import TrainConfig, train

    ap = argparse.ArgumentParser()
    ap.add_argument("--normal", default="0,1,7", help="Comma-separated normal digits, one model each.")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--mnist", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist")
    args = ap.parse_args()
    if not args.mnist.is_dir():
        print(f"no MNIST at {args.mnist}; pass --mnist", file=sys.stderr)
        return 2
    ds = load_dataset(DataSpec("mnist", data=str(args.mnist)))
    print(f"MNIST: train {len(ds.train)} (first 8,000), evaluate {len(ds.val)} (last 2,000); "
          f"conv AE, {args.epochs} epochs on the normal digit only; scores through real payloads")
    print(f"{'normal':>6} {'train n':>7} {'thr@p99':>8} " + " ".join(f"{d:>5}" for d in range(10)) + "   mean AUC")
    for d in (int(v) for v in args.normal.split(",")):
        tr, va = ds.labels_train == d, ds.labels_val == d
        one = Dataset(ds.spec, ds.train[tr], ds.val[va], ds.labels_train[tr], ds.labels_val[va], ds.channel_order)
        with tempfile.TemporaryDirectory() as tmp:
            run = train("conv", one, Path(tmp) / "run", {"loss": "bce"},
                        TrainConfig(epochs=args.epochs, batch_size=32, progress=False)).path
            export_run(run, ExportOptions(out=Path(tmp) / "b", calibration_samples=256, measure_speed=False))
            scorer = anomaly.Scorer(Path(tmp) / "b")
            threshold = anomaly.calibrate(scorer.score(ds.train[tr]), 99.0)
            normal = scorer.score(ds.val[va])
            aucs = {}
            for other in range(10):
                if other != d:
                    aucs[other] = anomaly.roc_auc(normal, scorer.score(ds.val[ds.labels_val == other]))
        cells = " ".join(f"{aucs[o]:>5.3f}" if o in aucs else f"{'-':>5}" for o in range(10))
        print(f"{d:>6} {int(tr.sum()):>7} {threshold:>8.4f} {cells}   {np.mean(list(aucs.values())):.3f}"
              f"   (held-out normals flagged: {(normal > threshold).mean():.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
