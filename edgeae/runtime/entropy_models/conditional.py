"""Conditional coding with integer tables and an escape: the machinery under `hyperprior` (and usable alone).

A family of K tables (docs/FORMAT.md, "Conditional tables"): table t has an integer `offset[t]` and a row of
frequencies whose last entry is the escape. A value v coded with table t is the symbol v - offset[t] when
0 <= v - offset[t] < len(row) - 1; any other value is coded as the escape symbol and v itself goes, as a
zigzag LEB128 varint, to the item's escape part. So every int32 value round-trips exactly, while the
tables only span the likely range.

Values of one stream are coded in a fixed order grouped by table index (a stable sort of the flat index
array, which the decoder knows before it decodes), so the coder makes one call per table used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeae.errors import CorruptStream
from edgeae.runtime.entropy_models.streams import Tables

MAX_VALUE = (1 << 31) - 1  # escaped values are int32
_VARINT_BYTES = 5  # a zigzag int32 is at most 5 LEB128 bytes


class ConditionalTables:
    """K integer tables, each with an offset and an escape as its last symbol."""

    def __init__(self, offsets: Sequence[int], rows: Sequence[Sequence[int]], precision: int) -> None:
        if len(offsets) != len(rows) or not rows:
            raise ValueError("one offset per table, at least one table")
        self.offsets = np.asarray(offsets, np.int64)
        self.escape = np.array([len(r) - 1 for r in rows], np.int64)  # also the number of in-range values
        self.tables = Tables(rows, precision)

    def __len__(self) -> int:
        return len(self.escape)

    @staticmethod
    def order(index: np.ndarray) -> np.ndarray:
        """The coding order of a flat index array: grouped by table, otherwise in array order."""
        index = np.asarray(index)
        if index.size and index.min() >= 0 and index.max() < 1 << 16:
            # The same stable order; numpy sorts 16-bit keys by radix: 1.4 ms vs 9.4 ms for 196,608 int64
            # indices (a 768x512 photo's y), which was most of the hyperprior's entropy-coding time.
            index = index.astype(np.uint16)
        return np.argsort(index, kind="stable")

    def encode(self, streams: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[list[bytes], list[np.ndarray]]:
        """(integer values, table index) per stream (flat, in coding order) -> (bodies, escaped values of
        each stream in order)."""
        coded, escaped = [], []
        for values, index in streams:
            v = np.asarray(values, np.int64).reshape(-1)
            t = np.asarray(index, np.int64).reshape(-1)
            if len(v) and np.abs(v).max() > MAX_VALUE:
                raise ValueError(f"values must be within +-{MAX_VALUE}")
            if len(t) and (t.min() < 0 or t.max() >= len(self)):
                raise ValueError(f"table indices must be in 0..{len(self) - 1}")
            s = v - self.offsets[t]
            esc = self.escape[t]
            out = (s < 0) | (s >= esc)
            s[out] = esc[out]
            coded.append((s, t))
            escaped.append(v[out])
        return self.tables.encode(coded), escaped

    def decode(self, bodies: Sequence[bytes], indices: Sequence[np.ndarray], escapes: Sequence[EscapeReader],
               what: Sequence[str]) -> list[np.ndarray]:
        """Bodies + table index per stream (flat, coding order) -> int64 values per stream; escaped values are
        read from each stream's EscapeReader."""
        symbols = self.tables.decode(bodies, indices, what=what)
        out = []
        for s, index, reader, name in zip(symbols, indices, escapes, what, strict=True):
            t = np.asarray(index, np.int64).reshape(-1)
            s = s.astype(np.int64)
            v = s + self.offsets[t]
            esc = s == self.escape[t]
            if esc.any():
                e = reader.take(int(esc.sum()), name)
                lo = self.offsets[t[esc]]
                if ((e >= lo) & (e < lo + self.escape[t[esc]])).any():
                    raise CorruptStream(f"{name}: an escaped value lies inside its table's range; the payload "
                                        "is damaged")
                v[esc] = e
            out.append(v)
        return out


def write_escapes(values: Sequence[np.ndarray]) -> bytes:
    """Escaped int values (several streams, in order) -> one escape part: zigzag LEB128 varints."""
    v = np.concatenate([np.asarray(x, np.int64) for x in values]) if len(values) else np.zeros(0, np.int64)
    if not len(v):
        return b""
    u = ((v << 1) ^ (v >> 63)).astype(np.uint64)  # zigzag: 0, -1, 1, -2 ... -> 0, 1, 2, 3 ...
    n = np.ones(len(u), np.int64)
    for k in range(1, _VARINT_BYTES):
        n += u >= np.uint64(1 << (7 * k))
    ends = np.cumsum(n)
    out = np.zeros(int(ends[-1]), np.uint8)
    starts = ends - n
    for k in range(_VARINT_BYTES):
        has = n > k
        group = ((u[has] >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        more = (n[has] > k + 1).astype(np.uint8) << 7
        out[starts[has] + k] = group | more
    return out.tobytes()


class EscapeReader:
    """Reads the escape part of one item in order; `finish` checks nothing is left over."""

    def __init__(self, part: bytes) -> None:
        b = np.frombuffer(part, np.uint8)
        ends = np.flatnonzero(b < 0x80)
        if len(b) and (not len(ends) or ends[-1] != len(b) - 1):
            raise CorruptStream("the escape part ends inside a varint; the payload is damaged")
        starts = np.concatenate([[0], ends[:-1] + 1]) if len(ends) else ends
        n = ends - starts + 1
        if len(n) and (n.max() > _VARINT_BYTES or ((n > 1) & (b[ends] == 0)).any()):
            raise CorruptStream("the escape part holds a non-canonical or over-long varint; the payload is damaged")
        u = np.zeros(len(n), np.uint64)
        for k in range(_VARINT_BYTES):
            has = n > k
            u[has] |= (b[starts[has] + k].astype(np.uint64) & np.uint64(0x7F)) << np.uint64(7 * k)
        if len(u) and u.max() > np.uint64(2 * MAX_VALUE):
            raise CorruptStream("the escape part holds a value outside int32; the payload is damaged")
        self.values = ((u >> np.uint64(1)).astype(np.int64)) ^ -((u & np.uint64(1)).astype(np.int64))
        self.pos = 0

    def take(self, n: int, what: str) -> np.ndarray:
        if self.pos + n > len(self.values):
            raise CorruptStream(f"{what}: the escape part holds fewer values than the stream escapes")
        out = self.values[self.pos : self.pos + n]
        self.pos += n
        return out

    def finish(self) -> None:
        if self.pos != len(self.values):
            raise CorruptStream(f"the escape part holds {len(self.values) - self.pos} values no stream escapes")
