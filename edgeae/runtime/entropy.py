"""Integer symbols <-> item bodies: the range coder (edgeae/runtime/rangecoder.py) with per-channel tables.

The bitstream is coder 1 (`range`) of docs/FORMAT.md: per item, symbols in channel-major order, channel
c coded with table c (Categorical(frequencies[c] / 2**precision, perfect=False) in constriction's terms),
body = the coder's uint32 words little-endian. Integer tables make decoding bit-exact anywhere, and the
constriction and numpy backends write the same bytes (`backend` says which one is active).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeae.runtime.manifest import EntropySpec, LatentSpec
from edgeae.runtime.rangecoder import RangeCoder, RangeTables


class SymbolCoder:
    """Entropy-codes batched integer latents (N, *latent.shape), one independent body per item.

    `lanes=True` codes each item as interleaved lanes (rangecoder's lane framing, wire format v2) so that
    the numpy backend can vectorise a single big item; the default is the v1 body (one stream per item).
    A latent whose spatial size differs from the manifest's (fully convolutional bundles) is coded the
    same way: pass `shape` to decode.
    """

    def __init__(self, latent: LatentSpec, entropy: EntropySpec, backend: str | None = None) -> None:
        if entropy.coder != "range":
            raise ValueError(f"unknown entropy coder {entropy.coder!r}")
        self.latent = latent
        self.levels = latent.quantization.levels
        self.channels = latent.channels
        self.per_channel = latent.symbols // self.channels  # symbols of one channel in one item
        self._axis = latent.channel_axis  # channel-major order: this axis goes first within an item
        self.tables = RangeTables(entropy.frequencies, entropy.precision)
        self.range_coder = RangeCoder(self.tables, backend)
        self._index: dict[int, np.ndarray] = {}

    @property
    def backend(self) -> str:
        return self.range_coder.backend

    def _table_index(self, per_channel: int) -> np.ndarray:
        idx = self._index.get(per_channel)
        if idx is None:
            idx = self._index[per_channel] = np.repeat(np.arange(self.channels, dtype=np.int64), per_channel)
        return idx

    def _check_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = tuple(int(d) for d in shape)
        if len(shape) != len(self.latent.shape) or shape[self._axis - 1] != self.channels:
            raise ValueError(f"symbols of item shape {shape} do not match the latent (N, *{self.latent.shape})")
        return shape

    # --- batch <-> (N, C, S) rows in coding order ---

    def to_rows(self, q: np.ndarray) -> np.ndarray:
        """(N, *item shape) -> int64 (N, C, S), C-contiguous, in coding order."""
        if q.shape[1:] != self.latent.shape:
            raise ValueError(f"symbols of shape {q.shape} do not match the latent (N, *{self.latent.shape})")
        return self._rows(q)

    def _rows(self, q: np.ndarray) -> np.ndarray:
        if self._axis != 1:
            q = np.moveaxis(q, self._axis, 1)
        return np.ascontiguousarray(q, dtype=np.int64).reshape(len(q), self.channels, -1)

    def from_rows(self, rows: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
        inner = list(shape or self.latent.shape)
        inner.insert(0, inner.pop(self._axis - 1))
        q = rows.reshape(len(rows), *inner)
        return np.moveaxis(q, 1, self._axis) if self._axis != 1 else q

    # --- coding ---

    def encode(self, q: np.ndarray, lanes: bool = False) -> list[bytes]:
        """int symbols (N, *latent.shape), each in 0 .. levels-1 -> one body per item."""
        q = np.asarray(q)
        if q.ndim != len(self.latent.shape) + 1:
            raise ValueError(f"symbols of shape {q.shape} do not match the latent (N, *{self.latent.shape})")
        self._check_shape(q.shape[1:])
        if q.dtype.kind not in "iub":
            raise ValueError(f"symbols must be integers in 0..{self.levels - 1}; quantise the latent first")
        if q.size and (q.min() < 0 or q.max() >= self.levels):
            raise ValueError(f"symbols must be integers in 0..{self.levels - 1}; quantise the latent first")
        rows = self._rows(q)
        n, per = len(rows), rows.shape[2]
        index = self._table_index(per)
        if lanes:
            return self.range_coder.encode_lanes([(r.reshape(-1), index) for r in rows])
        words, nwords = self.range_coder.encode_flat(rows.reshape(-1), np.tile(index, n),
                                                     np.full(n, self.channels * per, np.int64))
        data = words.astype("<u4").tobytes()
        off = np.concatenate([[0], np.cumsum(nwords) * 4]).tolist()
        return [data[off[i]:off[i + 1]] for i in range(n)]

    def decode(self, bodies: Sequence[bytes], lanes: bool = False,
               shape: tuple[int, ...] | None = None) -> np.ndarray:
        """One body per item -> int32 symbols (N, *shape or latent.shape); CorruptStream for any invalid body."""
        shape = self._check_shape(shape) if shape is not None else self.latent.shape
        per = int(np.prod(shape)) // self.channels
        index = self._table_index(per)
        if lanes:
            syms = self.range_coder.decode_lanes(bodies, [index] * len(bodies))
        else:
            syms = self.range_coder.decode(bodies, [index] * len(bodies))
        rows = np.stack(syms).reshape(len(bodies), self.channels, per) if bodies else \
            np.zeros((0, self.channels, per), np.int32)
        return self.from_rows(rows, shape)
