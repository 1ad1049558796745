"""Benchmark: the numpy range coder against constriction (same bytes), and what lanes cost and buy.

Two workloads, 1 thread, medians of repeats, numpy / constriction side by side:
- MNIST size: a batch of 64 items of 8x7x7 symbols (v1 bodies, one stream per item: numpy vectorises
  across the 64 items).
- 768x512 photo: one item of 192x32x48 symbols (stride 16; or --bundle's own latent and tables), v1 (one
  stream: numpy cannot vectorise it) and wire format v2 lanes, swept over symbols per lane so the
  overhead (bytes over the v1 body) sits next to the speed it buys. The row marked `*` is the lane rule
  (rangecoder.LANE_SYMBOLS).

Times are CPU seconds of this process (time.process_time; the coders are single-threaded), which a busy
shared host disturbs far less than wall time; wall medians are printed too.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_coder.py [--bundle export/photos-codec] [--repeats 5]

Synthetic tables: per channel a discretised Laplacian around the middle level, scales log-spaced so that
the mean cost is ~1.2 bits per symbol (like the photos codec bundles' own tables); symbols drawn from them.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy as np

from edgeae.runtime import rangecoder as rc
from edgeae.runtime.rangecoder import RangeCoder, RangeTables

PRECISION = 16


def laplace_tables(channels: int, levels: int, rng: np.random.Generator) -> np.ndarray:
    grid = np.arange(levels) - levels // 2
    scales = np.exp(rng.uniform(np.log(0.15), np.log(2.5), channels))
    rows = []
    for s in scales:
        p = np.exp(-np.abs(grid) / s) + 1e-9
        f = 1 + np.floor(p / p.sum() * ((1 << PRECISION) - levels)).astype(np.int64)
        f[levels // 2] += (1 << PRECISION) - f.sum()
        rows.append(f)
    return np.stack(rows)


def draw(freqs: np.ndarray, per_channel: int, rng: np.random.Generator) -> np.ndarray:
    """Channel-major symbols of one item drawn from its tables."""
    cdf = np.cumsum(freqs, axis=1) / freqs.sum(1, keepdims=True)
    u = rng.random((len(freqs), per_channel))
    return np.stack([np.minimum(np.searchsorted(c, x, side="right"), len(c) - 1) for c, x in zip(cdf, u, strict=True)])


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median CPU seconds, median wall seconds) over repeats, after one warm-up call."""
    fn()
    cpu, wall = [], []
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return float(np.median(cpu)), float(np.median(wall))


def compare(tables: RangeTables, items: list[tuple[np.ndarray, np.ndarray]], lanes: bool,
            repeats: int) -> dict[str, object]:
    """Encode + decode with both backends; checks they give the same bytes and symbols."""
    out: dict[str, object] = {}
    bodies = {}
    index = [i for _, i in items]
    for name in ("constriction", "numpy"):
        coder = RangeCoder(tables, name)
        enc = coder.encode_lanes if lanes else coder.encode
        dec = coder.decode_lanes if lanes else coder.decode
        bodies[name] = b = enc(items)
        got = dec(b, index)
        assert all(np.array_equal(g, s) for g, (s, _) in zip(got, items, strict=True)), name
        out[name] = (timed(lambda enc=enc: enc(items), repeats), timed(lambda dec=dec, b=b: dec(b, index), repeats))
    assert bodies["numpy"] == bodies["constriction"], "the backends wrote different bytes"
    out["bytes"] = sum(len(b) for b in bodies["numpy"])
    return out


def row(label: str, r: dict[str, object], base: int | None = None) -> str:
    (ce, cd), (ne, nd) = r["constriction"], r["numpy"]
    over = "" if base is None else f"{r['bytes'] - base:+7d} B ({100 * (r['bytes'] - base) / base:5.2f}%)"
    return (f"{label:<26} {r['bytes']:>8} {over:>19}  "
            f"enc {1e3 * ce[0]:7.2f} / {1e3 * ne[0]:8.2f} ms = {ne[0] / ce[0]:5.1f}x   "
            f"dec {1e3 * cd[0]:7.2f} / {1e3 * nd[0]:8.2f} ms = {nd[0] / cd[0]:5.1f}x   "
            f"(wall {ne[1] / ce[1]:.1f}x / {nd[1] / cd[1]:.1f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", help="take the photo workload's latent shape and tables from this bundle")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not rc.constriction_available():
        raise SystemExit("bench_coder compares against constriction: pip install 'edgeae[fast]' first")
    rng = np.random.default_rng(args.seed)
    print(f"{platform.machine()} {platform.processor() or ''} python {platform.python_version()} "
          f"numpy {np.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
          "CPU ms, constriction / numpy")
    head = f"{'':<26} {'bytes':>8} {'over v1':>19}"

    # MNIST size: 64 items of 8x7x7
    freqs = laplace_tables(8, 256, rng)
    tables = RangeTables(freqs, PRECISION)
    index = np.repeat(np.arange(8), 49)
    items = [(draw(freqs, 49, rng).reshape(-1), index) for _ in range(64)]
    print(f"\nMNIST size: 64 items x 8x7x7 = {64 * 392} symbols, v1 bodies\n{head}")
    print(row("64 items (v1)", compare(tables, items, False, args.repeats * 4)))

    # 768x512 photo latent
    if args.bundle:
        from edgeae.runtime import Encoder  # noqa: PLC0415
        from edgeae.runtime.manifest import load_manifest  # noqa: PLC0415

        m = load_manifest(args.bundle)
        freqs = np.array(m.entropy.frequencies, np.int64)
        tables = RangeTables(freqs, m.entropy.precision)
        enc = Encoder(args.bundle)  # an any-size bundle's latent of a 768x512 photo, else its one size
        shape = enc.latent_shape_for(512, 768) if enc.any_size else m.latent.shape
        source = f"{args.bundle}'s tables"
    else:
        shape = (192, 32, 48)
        freqs = laplace_tables(192, 64, rng)
        tables = RangeTables(freqs, PRECISION)
        source = "synthetic Laplacian tables"
    channels = len(freqs)
    per = int(np.prod(shape)) // channels
    n = channels * per
    item = (draw(freqs, per, rng).reshape(-1), np.repeat(np.arange(channels), per))
    print(f"\n768x512 photo: one item of {'x'.join(map(str, shape))} = {n} symbols, {source}\n{head}")
    v1 = compare(tables, [item], False, args.repeats)
    print(row("v1 (one stream)", v1))
    rule = rc.LANE_SYMBOLS
    try:
        for per_lane in (8192, 4096, 2048, 1024, 512):
            rc.LANE_SYMBOLS = per_lane
            mark = "*" if per_lane == rule else " "
            label = f"{mark}lanes: {rc.lane_count(n)} x ~{n // rc.lane_count(n)}"
            print(row(label, compare(tables, [item], True, args.repeats), base=int(v1["bytes"])))
    finally:
        rc.LANE_SYMBOLS = rule


if __name__ == "__main__":
    main()
