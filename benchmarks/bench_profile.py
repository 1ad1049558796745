"""Benchmark: profile a bundle, fp32 vs int8, 1 and 2 threads, batch 1 and 64, next to PyTorch eager and JPEG.

Every configuration runs in a fresh process (cold start apart from steady state); the baselines run in the
same invocation on the same images. With a 1x28x28 bundle and ../shared/data/mnist present, the images are
the first 64 of the benchmarks' MNIST evaluation split (the last 2,000 test images); otherwise synthetic ones.

    .venv/bin/python benchmarks/bench_profile.py export/mnist-conv [--seconds 1] [--json bench-out/profile.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeae.profiling import ProfileSettings, profile_bundle
from edgeae.runtime.summary import load_summary_manifest

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path, nargs="?", default=Path("export/mnist-conv"))
    p.add_argument("--seconds", type=float, default=1.0, help="timed seconds per configuration")
    p.add_argument("--images", type=Path, help="a folder of images or a .npy array (default: MNIST or synthetic)")
    p.add_argument("--json", type=Path, help="also write every figure as JSON")
    a = p.parse_args()
    images = a.images
    if images is None and SHARED_MNIST.exists() and load_summary_manifest(a.bundle)["input"]["shape"] == [1, 28, 28]:
        from edgeae.train.data import read_idx

        images = read_idx(SHARED_MNIST)[-2000:][:64]  # a batch of 64 from the evaluation split
    settings = ProfileSettings(precisions=("fp32", "int8"), threads=(1, 2), batches=(1, 64), seconds=a.seconds,
                               baselines=("torch", "jpeg"), images=images)
    report = profile_bundle(a.bundle, settings)
    print(report.table())
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        report.write_json(a.json)
        print(f"json: {a.json}")


if __name__ == "__main__":
    main()
