"""`hyperprior`: y coded conditionally on a hyper-latent z (Balle et al. 2018), bit-exact on any machine.

Encoder side: z = hyper_encoder(y) (float, encoder only), z values = round(z); decoder and encoder both run
the bundle's integer `hyper_decoder` graph on the int32 z values, which gives an int32 table `index`
(N, C, h, w) for every y symbol (and, with `entropy.y.means`, an int32 `mean` in 1/P steps, P =
`entropy.y.mean_phases`, 1 by default). Per symbol, with base = floor(mean / P) and phase = mean - P * base,
the value round(y) - base is coded with y table t = index * P + phase (the Gaussian of scale[index] centred
at phase / P). Then, per item:

    part 0  z values, channel-major, z channel c coded with z table c
    part 1  y values in the order of a stable sort of the flat table array t, y symbol i with table t[i]
    part 2  escaped values (z's, then y's) as zigzag LEB128 varints (docs/FORMAT.md)

The decoder graph gets y_hat = value + base = round(y), the integer latent itself.

Any latent size: z has ceil(h / s) x ceil(w / s) positions (s = `entropy.z.stride`). When h or w is not a
multiple of s, the encoder edge-pads y (bottom and right) to s times that before the hyper_encoder, and both
sides keep the top-left h x w of the hyper_decoder's output: only y's own symbols are coded, so an image pads
to y's stride (`input.size_multiple`), not to y's stride times s (docs/FORMAT.md, "Any image size").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeae.errors import BundleError, CorruptStream
from edgeae.runtime import payload as wire
from edgeae.runtime.entropy_models import EntropyModel, Graphs
from edgeae.runtime.entropy_models.conditional import (
    MAX_VALUE,
    ConditionalTables,
    EscapeReader,
    write_escapes,
)
from edgeae.runtime.manifest import Manifest

INDEX_OUTPUT, MEAN_OUTPUT = "index", "mean"  # the hyper_decoder graph's outputs


def _integers(x: np.ndarray) -> np.ndarray:
    """Round float latents to int64, NaN to 0, clamped to the int32 range escapes can carry."""
    return np.clip(np.nan_to_num(np.rint(x), nan=0.0), -MAX_VALUE, MAX_VALUE).astype(np.int64)


def tables_and_base(index: np.ndarray, mean: np.ndarray | None, phases: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(scale index, mean in 1/P steps or None) -> (y table of every symbol, base floor(mean / P) or None)."""
    index = np.asarray(index, np.int64)
    if mean is None:
        return index, None
    base, phase = np.divmod(np.asarray(mean, np.int64), phases)
    return index * phases + phase, base


class Hyperprior(EntropyModel):
    name = "hyperprior"
    model_id = wire.MODEL_HYPERPRIOR
    graph_roles = ("hyper_encoder", "hyper_decoder")

    def __init__(self, manifest: Manifest, graphs: Graphs | None = None) -> None:
        super().__init__(manifest, graphs)
        e = manifest.entropy
        assert e.z is not None and e.y is not None  # the manifest validator guarantees both for a hyperprior
        self.qualities = len(e.qualities)
        points = range(1, self.qualities + 1) if self.qualities else (0,)
        # per operating point (one for a bundle of one quality): z's tables, and the gain y is scaled by
        self._z = [ConditionalTables(t.offsets, t.frequencies, e.precision) for t in map(e.z_tables, points)]
        self._gains: list[np.ndarray | None] = [np.asarray(q.gain, np.float32).reshape(1, -1, 1, 1)
                                                 for q in e.qualities] or [None]
        self.z = self._z[0]
        self.y = ConditionalTables(e.y.offsets, e.y.frequencies, e.precision)
        self.z_stride = e.z.stride
        self.means = e.y.means
        self.phases = e.y.mean_phases
        self.z_channels = len(e.z_tables(1 if self.qualities else 0).offsets)
        self.y_channels = manifest.latent.channels
        self._z_index: dict[tuple[int, ...], np.ndarray] = {}
        # verify: check every hyper_decoder run against the numpy int64 reference (edgeae.runtime.inthyper),
        # BundleError on any differing index (`edgeae decode --verify`)
        self.verify = False
        self._reference: Any = None

    def _point(self, quality: int) -> int:
        """The list position of an operating point (ValueError if the bundle has no such quality)."""
        if self.qualities and 1 <= quality <= self.qualities:
            return quality - 1
        if not self.qualities and quality == 0:
            return 0
        have = f"qualities 1..{self.qualities}" if self.qualities else "one quality (0)"
        raise ValueError(f"quality {quality} is not an operating point of this bundle, which has {have}")

    def gain(self, quality: int = 0) -> np.ndarray | None:
        """The per-channel gain (1, C, 1, 1) of an operating point (None: a bundle of one quality codes round(y))."""
        return self._gains[self._point(quality)]

    @property
    def scale_levels(self) -> int:
        """K: the hyper_decoder graph's index lies in 0..K-1 (P tables per scale index)."""
        return len(self.y) // self.phases

    def _graph(self, role: str) -> Any:
        if self.graphs is None:
            raise BundleError(f"the hyperprior entropy model needs the bundle's {role} graph")
        return self.graphs(role)

    def z_shape(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        c, h, w = shape
        if c != self.y_channels or h < 1 or w < 1:
            raise CorruptStream(f"a latent of shape {shape} does not fit this hyperprior ({self.y_channels} y "
                                "channels)")
        s = self.z_stride
        return self.z_channels, -(-h // s), -(-w // s)

    def _zindex(self, zshape: tuple[int, ...]) -> np.ndarray:
        idx = self._z_index.get(zshape)
        if idx is None:
            idx = np.repeat(np.arange(zshape[0]), zshape[1] * zshape[2])
            if len(self._z_index) >= 64:  # many image sizes: keep the cache small
                self._z_index.clear()
            self._z_index[zshape] = idx
        return idx

    def hyper_decode(self, z: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None]:
        """int z values (n, *z_shape) -> int64 y table of every symbol (n, *shape) and the integer base
        floor(mean / P) added to its value (or None without means)."""
        out = self._graph("hyper_decoder")(np.ascontiguousarray(z, np.int32))
        if INDEX_OUTPUT not in out or (self.means and MEAN_OUTPUT not in out):
            raise BundleError(f"the hyper_decoder graph must output {INDEX_OUTPUT!r}"
                              f"{f' and {MEAN_OUTPUT!r}' if self.means else ''}; re-export the bundle")
        index = np.asarray(out[INDEX_OUTPUT])
        mean = np.asarray(out[MEAN_OUTPUT]) if self.means else None
        s = self.z_stride
        want = (len(z), shape[0], z.shape[2] * s, z.shape[3] * s)  # then cut to y's own h x w
        if index.shape != want or (mean is not None and mean.shape != want):
            raise BundleError(f"the hyper_decoder graph gives shape {index.shape} for a hyper-latent of "
                              f"{z.shape}, expected {want}; re-export the bundle")
        if index.dtype.kind not in "iu" or (mean is not None and mean.dtype.kind not in "iu"):
            raise BundleError("the hyper_decoder graph must give integer index and mean; re-export the bundle")
        if self.verify:
            self._check_reference(z, index, mean)
        index = index[:, :, : shape[1], : shape[2]]
        if mean is not None:
            mean = mean[:, :, : shape[1], : shape[2]]
        if index.size and (index.min() < 0 or index.max() >= self.scale_levels):
            raise BundleError(f"the hyper_decoder graph gives table indices outside 0..{self.scale_levels - 1}; "
                              "re-export the bundle")
        return tables_and_base(index, mean, self.phases)

    def _check_reference(self, z: np.ndarray, index: np.ndarray, mean: np.ndarray | None) -> None:
        try:
            from edgeae.runtime import inthyper
        except ImportError:
            raise BundleError("this edgeae has no integer hyper-decoder reference (edgeae.runtime.inthyper) to "
                              "verify against; install the edgeae release that exported the bundle") from None

        if self._reference is None:
            graph = self._graph("hyper_decoder")
            ref = inthyper.IntHyperDecoder.load(graph.path)
            if (bool(ref.mean_range), ref.mean_phases) != (self.means, self.phases):
                raise BundleError(f"the hyper_decoder graph's means (means {bool(ref.mean_range)}, {ref.mean_phases} "
                                  f"phases) disagree with the manifest's (means {self.means}, {self.phases} phases); "
                                  "re-export the bundle")
            self._reference = ref
        inthyper.verify(self._reference, z, index, mean=mean)

    def integers(self, y: np.ndarray, quality: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Float latents (n, C, h, w) -> the int z values (of y edge-padded to whole z positions) and the int y
        values the encoder codes (before means). At a quality of a multi-quality bundle, y is first scaled by its
        gain (the hyper_encoder sees the scaled latent)."""
        g = self.gain(quality)
        if g is not None:
            y = y * g
        _, zh, zw = self.z_shape(tuple(y.shape[1:]))
        s = self.z_stride
        pad = ((0, 0), (0, 0), (0, zh * s - y.shape[2]), (0, zw * s - y.shape[3]))
        padded = np.pad(y, pad, mode="edge") if any(p[1] for p in pad) else y
        z = self._graph("hyper_encoder")(np.ascontiguousarray(padded, np.float32))
        zf = next(iter(z.values())) if len(z) == 1 else z[self.manifest.graphs["hyper_encoder"].output]
        return _integers(zf), _integers(y)

    def encode(self, y: np.ndarray, quality: int = 0) -> list[tuple[bytes, ...]]:
        return self.encode_values(*self.integers(y, quality), quality=quality)

    def encode_values(self, zi: np.ndarray, yi: np.ndarray, quality: int = 0) -> list[tuple[bytes, ...]]:
        """int z values (n, *z_shape) and int y values (n, *shape) -> each item's parts. `encode` gives it
        `integers(y)`; an encoder that chooses other values (benchmarks/bench_encoder_search.py) calls it direct."""
        z_tables = self._z[self._point(quality)]
        shape = tuple(yi.shape[1:])
        zshape = self.z_shape(shape)
        if zi.shape[1:] != zshape:
            raise BundleError(f"the hyper_encoder graph gives shape {zi.shape[1:]} for a latent of {shape}; "
                              f"expected {zshape}; re-export the bundle")
        table, base = self.hyper_decode(zi, shape)
        values = yi if base is None else np.clip(yi - base, -MAX_VALUE, MAX_VALUE)
        zidx = self._zindex(zshape)
        z_bodies, z_esc = z_tables.encode([(zi[i].reshape(-1), zidx) for i in range(len(yi))])
        ys = []
        for i in range(len(yi)):
            idx = table[i].reshape(-1)
            order = self.y.order(idx)
            ys.append((values[i].reshape(-1)[order], idx[order]))
        y_bodies, y_esc = self.y.encode(ys)
        return [(bz, by, write_escapes([ez, ey])) for bz, by, ez, ey in zip(z_bodies, y_bodies, z_esc, y_esc,
                                                                             strict=True)]

    def decode(self, parts: Sequence[tuple[bytes, ...]], shape: tuple[int, ...], lanes: bool = True,
               quality: int = 0) -> np.ndarray:
        if any(len(p) != 3 for p in parts):
            raise CorruptStream("a hyperprior item has exactly three parts (z, y, escapes)")
        try:
            point = self._point(quality)
        except ValueError as exc:
            raise CorruptStream(f"payload {exc}") from None
        n = len(parts)
        zshape = self.z_shape(shape)
        zidx = self._zindex(zshape)
        readers = [EscapeReader(p[2]) for p in parts]
        z = self._z[point].decode([p[0] for p in parts], [zidx] * n, readers, [f"item {i} z" for i in range(n)])
        table, base = self.hyper_decode(np.stack(z).reshape(n, *zshape), shape)
        flat = table.reshape(n, -1)
        orders = [self.y.order(idx) for idx in flat]
        values = self.y.decode([p[1] for p in parts], [idx[o] for idx, o in zip(flat, orders, strict=True)],
                               readers, [f"item {i} y" for i in range(n)])
        y = np.empty((n, flat.shape[1]), np.int64)
        for i, (o, v, r) in enumerate(zip(orders, values, readers, strict=True)):
            y[i, o] = v
            r.finish()
        y_hat = y.reshape(n, *shape)
        if base is not None:
            y_hat += base
        g = self._gains[point]
        return y_hat.astype(np.float32) if g is None else y_hat.astype(np.float32) / g

    def describe(self) -> dict[str, Any]:
        e = self.manifest.entropy
        assert e.z is not None and e.y is not None
        zs = [e.z_tables(q) for q in (range(1, self.qualities + 1) if self.qualities else (0,))]
        out = {"model": self.name, "precision": e.precision,
               "z": {"tables": len(self.z) * len(zs), "entries": sum(sum(map(len, t.frequencies)) for t in zs),
                     "stride": self.z_stride},
               "y": {"tables": len(self.y), "entries": sum(map(len, e.y.frequencies)), "means": self.means,
                     "mean_phases": self.phases,
                     "scales": [min(e.y.scales), max(e.y.scales)] if e.y.scales else None}}
        if self.qualities:
            out["qualities"] = [{"quality": k, "lmbda": q.lmbda, "gain_mean": round(float(np.mean(q.gain)), 4)}
                                for k, q in enumerate(e.qualities, 1)]
            out["default_quality"] = e.default_quality
        return out


MODEL = Hyperprior
