"""Benchmark: one any-size bundle at several image sizes, through real payloads.

Per size (default 64x64, 33x47, 768x512, 1920x1080): payload bytes and bits per pixel, the full
`Encoder.encode()` next to a bare `session.run` of the encoder graph on the padded image (ratio = what
padding, entropy coding and framing add), the entropy model's share of the encode time, and
`Decoder.decode()` next to a bare decoder-graph run. Medians of repeats, 1 image per payload. "entropy" is
the coding alone (quantise, order, range-code, escapes): a hyperprior's hyper_encoder / hyper_decoder graph
runs are timed apart and left out of it.

    .venv/bin/python benchmarks/bench_anysize.py BUNDLE [--threads 1] [--sizes 64x64,1920x1080] [--repeats 5]

Images: seeded smooth random fields (low-pass noise), so the bytes are those of a plausible photo-like
signal; pass --photos DIR to use real photographs instead (each resized by cropping to the size).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeae.runtime import Decoder, Encoder


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: onnxruntime plans memory for a new input shape on its first run
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def encode_breakdown(enc: Encoder, img: np.ndarray, repeats: int) -> dict[str, float]:
    """Medians (ms) of the full `Encoder.encode` and its parts: the bare encoder graph, the hyperprior's graphs
    (hyper-encoder + integer hyper-decoder; 0 for other entropy models) and the entropy coding proper
    (quantisation, ordering, range coding, escapes) timed as `entropy.encode` minus those graphs; `other_ms`
    is what is left of `encode_ms` (preprocessing, padding, framing)."""
    x = enc.pad(enc.preprocess(img))
    y = enc.latents(x)
    full = median_ms(lambda: enc.encode(img), repeats)
    graph = median_ms(lambda: enc.graph.main(x), repeats)
    hyper = 0.0
    if hasattr(enc.entropy, "hyper_decode"):
        zi, _ = enc.entropy.integers(y)
        hyper = median_ms(lambda: enc.entropy.integers(y), repeats)
        hyper += median_ms(lambda: enc.entropy.hyper_decode(zi, y.shape[1:]), repeats)
    coding = median_ms(lambda: enc.entropy.encode(y), repeats) - hyper
    return {"encode_ms": full, "graph_ms": graph, "hyper_ms": hyper, "coding_ms": coding,
            "other_ms": full - graph - hyper - coding, "coding_share": coding / full}


def smooth_image(h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    """Low-pass noise in 0..255: a few octaves of bilinearly upsampled random grids (Pillow)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = np.zeros((h, w, c))
    for octave in range(1, 6):
        gh, gw = max(2, h >> (6 - octave)), max(2, w >> (6 - octave))
        for ch in range(c):
            grid = Image.fromarray(rng.random((gh, gw)).astype(np.float32), mode="F")
            out[..., ch] += np.asarray(grid.resize((w, h), Image.BILINEAR)) / octave
    out = (out - out.min()) / max(out.max() - out.min(), 1e-9) * 255
    img = out.round().astype(np.uint8)
    return img[..., 0] if c == 1 else img


def photo(path: Path, h: int, w: int, c: int) -> np.ndarray:
    from PIL import Image

    im = np.asarray(Image.open(path).convert("L" if c == 1 else "RGB"))
    if im.shape[0] < h or im.shape[1] < w:
        im = np.asarray(Image.fromarray(im).resize((max(w, im.shape[1]), max(h, im.shape[0]))))
    return np.ascontiguousarray(im[:h, :w])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sizes", default="64x64,33x47,768x512,1920x1080", help="HxW list (height x width)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--int8", action="store_true")
    ap.add_argument("--photos", type=Path, help="a folder of photographs to crop the test images from")
    args = ap.parse_args()
    precision = "int8" if args.int8 else "fp32"
    enc = Encoder(args.bundle, precision, threads=args.threads)
    dec_precision = precision if enc.manifest.graphs["decoder"].int8_file else "fp32"  # int8 encoder-only bundles
    dec = Decoder(args.bundle, dec_precision, threads=args.threads)
    if not enc.any_size:
        raise SystemExit(f"{args.bundle} takes one size only ({enc.manifest.input.shape}); nothing to compare")
    c = enc.manifest.input.shape[0]
    photos = sorted(args.photos.iterdir()) if args.photos else []
    print(f"bundle {args.bundle} ({enc.manifest.model.get('family')}, entropy {enc.entropy.name}), encoder "
          f"{precision}, decoder {dec_precision}, "
          f"{args.threads} thread(s), multiple {enc.size_multiple}, medians of {args.repeats}")
    print(f"{'size':>10} {'padded':>10} {'bytes':>8} {'bpp':>7} {'encode ms':>10} {'bare enc':>9} {'ratio':>6} "
          f"{'entropy':>8} {'decode ms':>10} {'bare dec':>9} {'ratio':>6}")
    for i, size in enumerate(args.sizes.split(",")):
        h, w = (int(v) for v in size.lower().split("x"))
        img = photo(photos[i % len(photos)], h, w, c) if photos else smooth_image(h, w, c, seed=i)
        x = enc.pad(enc.preprocess(img))
        payload = enc.encode(img)
        t = encode_breakdown(enc, img, args.repeats)
        enc_ms, bare_enc, ent_ms = t["encode_ms"], t["graph_ms"], t["coding_ms"]
        yhat = dec.latents(payload)
        dec_ms = median_ms(lambda: dec.decode(payload), args.repeats)  # noqa: B023
        bare_dec = median_ms(lambda: dec.graph.main(np.ascontiguousarray(yhat)), args.repeats)  # noqa: B023
        print(f"{h}x{w:<5} {x.shape[2]}x{x.shape[3]:<5} {len(payload):>8} {8 * len(payload) / (h * w):>7.3f} "
              f"{enc_ms:>10.2f} {bare_enc:>9.2f} {enc_ms / bare_enc:>6.2f} {100 * ent_ms / enc_ms:>7.1f}% "
              f"{dec_ms:>10.2f} {bare_dec:>9.2f} {dec_ms / bare_dec:>6.2f}")


if __name__ == "__main__":
    main()
