"""Run a local graph on overlapping tiles: the same output as one whole run, in bounded memory.

A convolutional codec's activations grow with the image: the photo zoo's encoder peaked at ~490 MB over its
sessions for one 1920x1080 photograph (int8) and its decoder at ~880 MB, whatever the device has. A graph
whose manifest entry carries `halo` (written only by the exporter's proof that every output cell depends on
at most `halo` input cells each side, edgeae.bundling.halo) runs here on tiles instead: each tile reads its
core plus the halo, and only the core's outputs are kept, so the result equals the whole run (up to the
float rounding of a different convolution shape) while the memory follows the tile, not the image.

Geometry, in the graph input's cells (pixels for an encoder, latent cells for a decoder): `unit` is the
alignment a tile must keep (an encoder's stride: a tile starting at a multiple of it sees the latent grid
the whole image does); `ratio` is output cells per input cell (1/16 for a stride-16 encoder, 16 for its
decoder). The plan splits each axis into near-equal runs of whole units and picks the grid that reads the
fewest cells while no tile's output (decoder) or input (encoder) exceeds `max_pixels` image pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from edgeae.errors import BundleError

MAX_SPLITS = 64  # per axis: beyond this the halo overhead dominates anyway


@dataclass(frozen=True)
class Tile:
    core: tuple[int, int, int, int]  # (top, bottom, left, right) in input cells: the outputs this tile gives
    read: tuple[int, int, int, int]  # the input window it runs on: the core plus the halo, inside the image


def _cuts(n_units: int, parts: int, unit: int) -> list[tuple[int, int]]:
    edges = [round(i * n_units / parts) * unit for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _axis(n: int, unit: int, halo: int) -> list[tuple[list[tuple[int, int]], list[tuple[int, int]]]]:
    """Per number of parts 1..: (cores, read windows) along one axis of n cells."""
    units = n // unit
    out = []
    for parts in range(1, min(units, MAX_SPLITS) + 1):
        cores = _cuts(units, parts, unit)
        out.append((cores, [(max(0, a - halo), min(n, b + halo)) for a, b in cores]))
    return out


def plan(height: int, width: int, unit: int, halo: int, max_cells: int) -> list[Tile]:
    """Tiles covering a height x width input (multiples of `unit`) that each read at most `max_cells` input
    cells where any grid allows it (else the grid of the smallest tiles), fewest cells read in all; one tile
    when the whole input fits."""
    if height * width <= max_cells:
        return [Tile((0, height, 0, width), (0, height, 0, width))]
    if height % unit or width % unit:  # the runtime pads to the stride first; anything else is a caller's bug
        raise ValueError(f"a {height}x{width} input does not tile on a grid of {unit}")
    halo = -(-halo // unit) * unit  # a read window starts on the unit grid too
    best: tuple[tuple[bool, int], list[tuple[int, int]], list[tuple[int, int]], list[tuple[int, int]],
                list[tuple[int, int]]] | None = None
    cols_by_parts = _axis(width, unit, halo)
    for rows, rread in _axis(height, unit, halo):
        rmax, rsum = max(b - a for a, b in rread), sum(b - a for a, b in rread)
        for cols, cread in cols_by_parts:
            biggest = rmax * max(b - a for a, b in cread)
            fits = biggest <= max_cells
            key = (not fits, rsum * sum(b - a for a, b in cread) if fits else biggest)
            if best is None or key < best[0]:
                best = (key, rows, rread, cols, cread)
            if fits:
                break  # more columns only read more
    assert best is not None
    _, rows, rread, cols, cread = best
    return [Tile((t, b, lo, hi), (r0, r1, c0, c1))
            for (t, b), (r0, r1) in zip(rows, rread, strict=True) for (lo, hi), (c0, c1) in zip(cols, cread, strict=True)]


def run_tiled(graph: Callable[[np.ndarray], np.ndarray], x: np.ndarray, tiles: list[Tile],
              ratio: Fraction) -> np.ndarray:
    """x (N, C, H, W) -> graph output (N, C', H*ratio, W*ratio) assembled from one run per tile."""
    if len(tiles) == 1:
        return graph(x)
    n, _, h, w = x.shape
    out: np.ndarray | None = None
    for tile in tiles:
        r0, r1, c0, c1 = tile.read
        y = graph(np.ascontiguousarray(x[:, :, r0:r1, c0:c1]))
        want = (int((r1 - r0) * ratio), int((c1 - c0) * ratio))
        if y.ndim != 4 or y.shape[0] != n or y.shape[2:] != want:
            raise BundleError(f"a graph run on a {r1 - r0}x{c1 - c0} tile gave shape {y.shape}, not {want} cells; "
                              "its manifest halo does not fit it -- re-export the bundle")
        if out is None:
            out = np.empty((n, y.shape[1], int(h * ratio), int(w * ratio)), y.dtype)
        t, b, lo, hi = (int(v * ratio) for v in tile.core)
        dt, dl = int((tile.core[0] - r0) * ratio), int((tile.core[2] - c0) * ratio)
        out[:, :, t:b, lo:hi] = y[:, :, dt:dt + b - t, dl:dl + hi - lo]
    assert out is not None
    return out
