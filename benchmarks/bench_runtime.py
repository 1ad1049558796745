"""Benchmark: the torch-free runtime on one bundle, step by step, against the bare onnxruntime graph.

Per batch size (1 and 64): encode time per image split into preprocess / graph / quantise / entropy-code /
pack (timed inside the running pipeline), the full `Encoder.encode()` next to a bare `session.run` of the same graph on the same batch (goal:
ratio <= 1.25), the same split for `Decoder.decode()`, and payload bytes per image. Medians of repeats.

    .venv/bin/python benchmarks/bench_runtime.py export/mnist-conv [--threads 1] [--int8]

Images: the last MNIST test images from ../shared/data/mnist when the bundle takes 1x28x28, otherwise
seeded random pixels (bytes/image is then meaningless, times are not).
"""

from __future__ import annotations

import argparse
import gzip
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeae.runtime import Bundle, Decoder, Encoder
from edgeae.runtime import payload as wire
from edgeae.runtime.images import to_uint8

MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"


def median_us(fn: Callable[[], object], repeats: int) -> float:
    """Median over `repeats` of the mean time of a loop long enough (>= 20 ms) to time reliably, in us."""
    return float(np.median(_loops(lambda: (fn(), {})[1], repeats)[0]) * 1e6)


def chain_us(steps: list[tuple[str, Callable[[object], object]]], first: object, repeats: int) -> dict[str, float]:
    """Run the steps as one pipeline (each feeding the next) and split the time by step.

    Timing steps inside the chain matters: run alone in a hot loop, each step looks ~30% faster than it
    is when it follows the graph (caches and branch predictors are cold after onnxruntime's run).
    """

    def once() -> dict[str, float]:
        out, value = {}, first
        for name, fn in steps:
            t0 = time.perf_counter()
            value = fn(value)
            out[name] = time.perf_counter() - t0
        return out

    _, splits = _loops(once, repeats)
    return {name: float(np.median([s[name] for s in splits]) * 1e6) for name, _ in steps}


def paired_us(full: Callable[[], object], bare: Callable[[], object], repeats: int) -> dict[str, float]:
    """Full path and bare graph timed in alternating loops, so load drift on the host hits both alike;
    the ratio is the median of the per-repeat ratios."""
    pairs = [(median_us(full, 1), median_us(bare, 1)) for _ in range(repeats)]
    return {"full": float(np.median([f for f, _ in pairs])), "bare run": float(np.median([b for _, b in pairs])),
            "ratio": float(np.median([f / b for f, b in pairs]))}


def _loops(fn: Callable[[], dict[str, float]], repeats: int) -> tuple[list[float], list[dict[str, float]]]:
    for _ in range(3):
        fn()
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.02:
        fn()
        calls += 1
    totals, splits = [], []
    for _ in range(repeats):
        acc: dict[str, float] = {}
        t0 = time.perf_counter()
        for _ in range(calls):
            for k, v in fn().items():
                acc[k] = acc.get(k, 0.0) + v
        totals.append((time.perf_counter() - t0) / calls)
        splits.append({k: v / calls for k, v in acc.items()})
    return totals, splits


def images(shape: tuple[int, int, int], n: int) -> tuple[np.ndarray, str]:
    c, h, w = shape
    if (c, h, w) == (1, 28, 28) and MNIST.exists():
        raw = gzip.open(MNIST).read()
        return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)[-n:].copy(), "MNIST test images"
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, h, w, c) if c > 1 else (n, h, w), dtype=np.uint8)
    return x, "random pixels"


def encode_rows(enc: Encoder, x: np.ndarray, repeats: int) -> dict[str, float]:
    feeds = {enc.session.get_inputs()[0].name: enc.preprocess(x)}
    h, w = x.shape[1:3]
    rows = chain_us([("preprocess", enc.preprocess), ("graph", enc.latents), ("quantise", enc.entropy.quantize),
                     ("entropy", enc.entropy.encode_symbols),
                     ("pack", lambda bodies: enc.pack([wire.Item(h, w, (b,)) for b in bodies]))], x, repeats)
    pair = paired_us(lambda: enc.encode(x), lambda: enc.session.run(None, feeds), repeats)
    return {**rows, "encode()": pair["full"], "bare run": pair["bare run"], "ratio": pair["ratio"]}


def decode_rows(dec: Decoder, payload: bytes, repeats: int) -> dict[str, float]:
    feeds = {dec.session.get_inputs()[0].name: dec.latents(payload)}
    shape = dec.latent_shape
    rows = chain_us([("parse", dec.parse), ("entropy", lambda p: dec.entropy.decode_symbols(p.bodies, shape)),
                     ("dequantise", dec.entropy.dequantize), ("graph", dec.reconstruct), ("to uint8", to_uint8)],
                    payload, repeats)
    pair = paired_us(lambda: dec.decode(payload), lambda: dec.session.run(None, feeds), repeats)
    return {**rows, "decode()": pair["full"], "bare run": pair["bare run"], "ratio": pair["ratio"]}


def table(title: str, rows: dict[int, dict[str, float]], full: str) -> None:
    batches = sorted(rows)
    print(f"\n{title}: microseconds per image (median)")
    print(f"{'step':12}" + "".join(f"{'batch ' + str(b):>12}" for b in batches))
    for step in rows[batches[0]]:
        if step != "ratio":
            print(f"{step:12}" + "".join(f"{rows[b][step] / b:>12.2f}" for b in batches))
    print(f"{full + ' / bare':12}" + "".join(f"{rows[b]['ratio']:>12.2f}" for b in batches))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads [default: all cores]")
    p.add_argument("--int8", action="store_true", help="use the int8 graphs")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--batches", default="1,64")
    a = p.parse_args()
    bundle = Bundle.open(a.bundle)
    precision = "int8" if a.int8 else "fp32"
    enc = Encoder(bundle, precision, threads=a.threads)
    dec = Decoder(bundle, precision, threads=a.threads)
    batches = [int(b) for b in a.batches.split(",")]
    x_all, source = images(bundle.manifest.input.shape, 2000)
    print(f"bundle {a.bundle} ({precision}, latent {bundle.manifest.latent.shape}); {source}; "
          f"threads {a.threads or 'default'}; {platform.machine()} {platform.processor() or ''}".rstrip())
    enc_rows, dec_rows = {}, {}
    for b in batches:
        x = x_all[:b]
        enc_rows[b] = encode_rows(enc, x, a.repeats)
        dec_rows[b] = decode_rows(dec, enc.encode(x), a.repeats)
    table("encode", enc_rows, "encode()")
    table("decode", dec_rows, "decode()")
    sizes = np.array([len(s) for s in enc.encode_each(x_all)])
    pixels = int(np.prod(bundle.manifest.input.shape[1:]))
    print(f"\npayload bytes/image over {len(x_all)} images (one payload each): mean {sizes.mean():.1f}, "
          f"median {np.median(sizes):.0f}, min {sizes.min()}, max {sizes.max()} "
          f"({8 * sizes.mean() / pixels:.3f} bits per pixel; batch of 64 in one payload: "
          f"{len(enc.encode(x_all[:64])) / 64:.1f} bytes/image)")


if __name__ == "__main__":
    main()
