"""Benchmark: rate-distortion of edgeae bundles vs JPEG / WebP / PNG on a dataset's validation split.

Every image goes through the real runtime (one payload per image, header included) and through Pillow
(whole files, headers included). Prints the RD table, BD-rates (PCHIP, overlapping PSNR range only) and the
equal-quality comparison; optionally writes the report folder and the JSON.

    .venv/bin/python benchmarks/bench_rd.py export/mnist-conv --dataset mnist --data ../shared/data/mnist
    .venv/bin/python benchmarks/bench_rd.py export/demo-digits-conv --dataset digits --report bench-out/rd-digits

Measured 2026-11-23 (x86-64 AMD EPYC, 2 shared cores; default qualities; 23 s for MNIST), with the *earlier*
baseline settings (Pillow's default JPEG tables, WebP method 4). Since then JPEG uses optimize=True and WebP
method=6: JPEG files shrink ~40% on MNIST. For the current numbers across all families see
benchmarks/rd_mnist_all.sh.

    MNIST val (2,000 28x28), export/mnist-conv (conv 16-8, 8x7x7 latent, 8 bits, range coder):
      edgeae fp32 314.7 B (2.57 bpp) 23.59 dB; int8 330.8 B 23.59 dB
      JPEG at 23.59 dB (interpolated): 410.0 B -> edgeae fp32 uses 0.77x the bytes
      WebP q=1: 121.0 B at 25.57 dB -> DOMINATES the edgeae point (fewer bytes, higher PSNR)
      PNG (lossless): 281.2 B
    digits val (359 8x8), export/demo-digits-conv: edgeae 47.4 B 18.87 dB; JPEG q=1 338 B 14.45 dB;
      JPEG at 18.87 dB 345.6 B (edgeae 0.14x); WebP q=1 65.6 B 20.82 dB; PNG 123.5 B
    No BD-rate yet: each family has one bundle (a BD-rate needs >= 2 points on a curve).
"""

from __future__ import annotations

import argparse
import time

from edgeae.evaluate.classical import DEFAULT_QUALITIES, parse_codecs
from edgeae.evaluate.rd import evaluate, to_uint8_images
from edgeae.evaluate.report import markdown, write_report
from edgeae.train.data import load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--codecs", default="jpeg,webp,png")
    ap.add_argument("--qualities", default=",".join(map(str, DEFAULT_QUALITIES)))
    ap.add_argument("--label", action="append", dest="labels")
    ap.add_argument("--method", default="pchip", choices=["pchip", "cubic"])
    ap.add_argument("--report")
    ap.add_argument("--json")
    args = ap.parse_args()

    ds = load_dataset(args.dataset, data=args.data, seed=args.seed)
    images = to_uint8_images(ds.val[: args.limit] if args.limit else ds.val)
    labels = args.labels * len(args.bundles) if args.labels and len(args.labels) == 1 else args.labels
    t0 = time.perf_counter()
    ev = evaluate(args.bundles, images, parse_codecs(args.codecs), [int(q) for q in args.qualities.split(",")],
                  labels, progress=False, keep=6 if args.report else 0, method=args.method,
                  dataset={"name": args.dataset, "data": args.data, "seed": args.seed, "split": "val"})
    seconds = time.perf_counter() - t0
    text = markdown(ev)
    print(text[: text.index("![rate-distortion]")].rstrip())
    print(f"\n{len(images)} images, {len(ev.points)} RD points in {seconds:.1f} s")
    if args.json:
        ev.save(args.json)
    if args.report:
        print(f"wrote {write_report(ev, args.report, images)}")


if __name__ == "__main__":
    main()
