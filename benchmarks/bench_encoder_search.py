"""Encoder-side search, measured: can an encoder pick better symbols than round() for the same decoder?

Two searches, both on the encoder only (the bundle, the wire format and the decoder are unchanged), measured
through real payloads on whole photos (PSNR on RGB, bpp with headers) beside the same bundles' plain encoder:

  rate-aware rounding (--mu)   per latent value y, code whichever integer neighbour q of y minimises
                               (y - q)^2 + mu * bits(q), bits from the very integer table the runtime codes q
                               with (a greedy RDOQ in the latent domain); both families. mu = 0 is round().
  z search (--z-passes)        hyperprior only: y stays round(y) (so the image is bit-identical); the
                               hyper-latent symbols are changed by +-1 where that lowers bits(z) + bits(y | z),
                               greedily, on lattices of z positions 5 apart (whose effects on the hyper-decoder's
                               output, 18 y rows and columns, do not overlap), one channel and lattice at a time,
                               with the bundle's integer hyper-decoder graph. Cost: seconds per photo.

Each variant's curve is compared by BD-rate (PSNR, pchip) with its own family's plain curve and with the
factorized plain curve, so a search that helps only by trading PSNR for bits shows as a loss. Usage (the
session-11 figures in docs/HYPERPRIOR.md):

    OMP_NUM_THREADS=1 python benchmarks/bench_encoder_search.py \
        --hyper B/h_0.0035,B/h_0.007,B/h_0.013 --codec B/c_0.0035,B/c_0.007,B/c_0.013 \
        --mu 0.005,0.02 --z-passes 2 [--images N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hyperprior import bd_spread, code_lengths, conditional_bits, load_images, psnr  # noqa: E402

from edgeae.runtime import Decoder, Encoder  # noqa: E402

Z_SPACING = 5  # z positions this far apart change disjoint parts of the hyper-decoder's output


def rate_aware(x: np.ndarray, q0: np.ndarray, bits: Callable[[np.ndarray], np.ndarray], mu: float) -> np.ndarray:
    """Per value: q0 (= round(x)) or its other neighbour, whichever has the lower (x - q)^2 + mu * bits(q)."""
    alt = q0 + np.where(x >= q0, 1, -1)
    keep = (x - q0) ** 2 + mu * bits(q0)
    other = (x - alt) ** 2 + mu * bits(alt)
    return np.where(other < keep, alt, q0)


class _Wrapped:
    """An entropy model whose `encode` chooses the symbols; everything else is the wrapped model's."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.seconds: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


class FactorizedRDOQ(_Wrapped):
    def __init__(self, model: Any, mu: float) -> None:
        super().__init__(model)
        e = model.manifest.entropy
        self.lengths = code_lengths(e.frequencies, e.precision)
        self.mu = mu

    def encode(self, y: np.ndarray) -> list[tuple[bytes, ...]]:
        t0 = time.perf_counter()
        m = self.model
        q0 = m.quantize(y).astype(np.int64)
        off = np.asarray(m.quantizer.offset, np.float64).reshape(1, -1, *([1] * (y.ndim - 2)))
        step = np.asarray(m.quantizer.step, np.float64).reshape(off.shape)
        channel = np.broadcast_to(np.arange(y.shape[1]).reshape(off.shape), y.shape)

        def bits(q: np.ndarray) -> np.ndarray:
            inside = (q >= 0) & (q < m.levels)
            return np.where(inside, self.lengths[channel, np.clip(q, 0, m.levels - 1)], np.inf)

        # distortion in latent units: (y - (offset + step q))^2 = step^2 (x - q)^2 with x in symbol units
        x = (y.astype(np.float64) - off) / step
        q = rate_aware(x, q0, lambda v: bits(v) / step**2, self.mu)
        self.seconds.append(time.perf_counter() - t0)
        return [(body,) for body in m.encode_symbols(q.astype(np.int32))]


class _HyperBits:
    def __init__(self, model: Any) -> None:
        e = model.manifest.entropy
        self.model = model
        self.ly = code_lengths(e.y.frequencies, e.precision)
        self.lz = code_lengths(e.z.frequencies, e.precision)

    def y_bits(self, yi: np.ndarray, table: np.ndarray, base: np.ndarray | None) -> np.ndarray:
        m = self.model
        return conditional_bits(yi if base is None else yi - base, table, self.ly, m.y.offsets, m.y.escape)

    def z_bits(self, z: np.ndarray) -> np.ndarray:
        """z (C, h, w) -> bits of each symbol (z channel c coded with z table c)."""
        m = self.model
        table = np.broadcast_to(np.arange(z.shape[0])[:, None, None], z.shape)
        return conditional_bits(z, table, self.lz, m.z.offsets, m.z.escape)


class HyperRDOQ(_Wrapped):
    def __init__(self, model: Any, mu: float) -> None:
        super().__init__(model)
        self.bits = _HyperBits(model)
        self.mu = mu

    def encode(self, y: np.ndarray) -> list[tuple[bytes, ...]]:
        t0 = time.perf_counter()
        m = self.model
        zi, yi = m.integers(y)
        table, base = m.hyper_decode(zi, tuple(y.shape[1:]))
        q = rate_aware(y.astype(np.float64), yi, lambda v: self.bits.y_bits(v, table, base), self.mu)
        self.seconds.append(time.perf_counter() - t0)
        return m.encode_values(zi, q)


class ZSearch(_Wrapped):
    def __init__(self, model: Any, passes: int) -> None:
        super().__init__(model)
        self.bits = _HyperBits(model)
        self.passes = passes

    def _y_map(self, z: np.ndarray, yi: np.ndarray) -> np.ndarray:
        """Bits of y per y position (summed over channels) for each z of the batch z (n, *z_shape)."""
        table, base = self.model.hyper_decode(z, tuple(yi.shape))
        return self.bits.y_bits(np.broadcast_to(yi, table.shape), table, base).sum(axis=1)

    def search(self, z: np.ndarray, yi: np.ndarray) -> np.ndarray:
        """One item: z (*z_shape), yi (*shape) -> z with a lower bits(z) + bits(y | z), never a higher one."""
        z = z.copy()
        h, w = yi.shape[1:]
        zh, zw = z.shape[1:]
        y_map = self._y_map(z[None], yi)[0]
        z_bits = self.bits.z_bits(z)
        for _ in range(self.passes):
            for c in range(z.shape[0]):
                for a in range(min(Z_SPACING, zh)):
                    for b in range(min(Z_SPACING, zw)):
                        rows, cols = np.arange(a, zh, Z_SPACING), np.arange(b, zw, Z_SPACING)
                        cands = np.stack([z, z])
                        cands[0, c, a::Z_SPACING, b::Z_SPACING] += 1
                        cands[1, c, a::Z_SPACING, b::Z_SPACING] -= 1
                        diff = self._y_map(cands, yi) - y_map
                        integral = np.zeros((2, h + 1, w + 1))
                        integral[:, 1:, 1:] = diff.cumsum(1).cumsum(2)
                        # y rows / columns the hyper-decoder output of z position i reaches: 4i-7 .. 4i+10
                        r0, r1 = np.clip(4 * rows - 7, 0, h), np.clip(4 * rows + 11, 0, h)
                        c0, c1 = np.clip(4 * cols - 7, 0, w), np.clip(4 * cols + 11, 0, w)
                        gain = (integral[:, r1][:, :, c1] - integral[:, r0][:, :, c1]
                                - integral[:, r1][:, :, c0] + integral[:, r0][:, :, c0])
                        old = z_bits[c][np.ix_(rows, cols)]
                        gain += np.stack([self.bits.z_bits(k)[c][np.ix_(rows, cols)] for k in cands]) - old
                        best = gain.argmin(axis=0)
                        take = np.take_along_axis(gain, best[None], 0)[0] < 0
                        if take.any():
                            z[c][np.ix_(rows, cols)] += np.where(best == 0, 1, -1) * take
                            y_map = self._y_map(z[None], yi)[0]
                            z_bits = self.bits.z_bits(z)
        return z

    def encode(self, y: np.ndarray) -> list[tuple[bytes, ...]]:
        t0 = time.perf_counter()
        zi, yi = self.model.integers(y)
        z = np.stack([self.search(zi[i], yi[i]) for i in range(len(y))])
        self.seconds.append(time.perf_counter() - t0)
        return self.model.encode_values(z, yi)


def rd_point(bundle: str, images: list[tuple[str, np.ndarray]], wrap: Callable[[Any], Any] | None) -> dict:
    enc, dec = Encoder(bundle, threads=1), Decoder(bundle, threads=1)
    if wrap is not None:
        enc.entropy = wrap(enc.entropy)
    bpps, psnrs = [], []
    for _, img in images:
        data = enc.encode(img)
        rec = np.asarray(dec.decode(data))[0]
        bpps.append(8 * len(data) / (img.shape[0] * img.shape[1]))
        psnrs.append(psnr(rec, img))
    secs = getattr(enc.entropy, "seconds", [])
    return {"bundle": bundle, "bpp": float(np.mean(bpps)), "psnr": float(np.mean(psnrs)),
            "search_s": float(np.mean(secs)) if secs else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hyper", required=True, help="hyperprior bundles, comma-separated")
    ap.add_argument("--codec", required=True, help="factorized codec bundles, comma-separated")
    ap.add_argument("--data", default="../shared/data/photos/val")
    ap.add_argument("--mu", default="0.005,0.02", help="rate-aware rounding weights (latent units^2 per bit)")
    ap.add_argument("--z-passes", type=int, default=1, help="z search passes (0: no z search)")
    ap.add_argument("--images", type=int, default=0, help="only the first N photos (0: all)")
    ap.add_argument("--json")
    a = ap.parse_args()
    images = load_images(Path(a.data))
    images = images[: a.images] if a.images else images
    print(f"{len(images)} photographs from {a.data} (RGB, own sizes)")
    fams = {"hyperprior": a.hyper.split(","), "codec": a.codec.split(",")}
    rdoq = {"hyperprior": HyperRDOQ, "codec": FactorizedRDOQ}
    variants: dict[str, dict[str, Callable[[Any], Any] | None]] = {fam: {"plain": None} for fam in fams}
    for mu in (float(m) for m in a.mu.split(",") if m):
        for fam in fams:
            variants[fam][f"rdoq mu={mu:g}"] = lambda m, mu=mu, cls=rdoq[fam]: cls(m, mu)
    if a.z_passes:
        variants["hyperprior"][f"z search x{a.z_passes}"] = lambda m: ZSearch(m, a.z_passes)
    curves: dict[str, dict[str, list[dict]]] = {}
    for fam, bundles in fams.items():
        for name, wrap in variants[fam].items():
            pts = sorted((rd_point(b, images, wrap) for b in bundles), key=lambda p: p["bpp"])
            curves.setdefault(fam, {})[name] = pts
            line = ", ".join(f"{p['bpp']:.4f} bpp {p['psnr']:.3f} dB" for p in pts)
            print(f"  {fam:10s} {name:14s} {line}  (search {np.mean([p['search_s'] for p in pts]):.2f} s/photo)")
            print(f"  {'':10s} {'':14s} BD-rate vs plain {fam}: {bd_spread(curves[fam]['plain'], pts)}", flush=True)
    base = curves["codec"]["plain"]
    results = {f"{fam} {name}": bd_spread(base, pts) for fam in curves for name, pts in curves[fam].items()}
    for k, v in results.items():
        print(f"BD-rate {k} vs plain factorized: {v}")
    if a.json:
        Path(a.json).write_text(json.dumps({"curves": curves, "bd_vs_plain_codec": results}, indent=2))


if __name__ == "__main__":
    main()
