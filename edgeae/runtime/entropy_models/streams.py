"""Range-coded streams from flat symbols + a flat per-symbol table index, over integer tables.

The only place the entropy models reach the coder. Every table is a row of ints >= 1 summing to
2**precision (rows may differ in length); symbol s of table t is coded with probability row[s] / 2**precision.
A stream's body is the coder's 32-bit words, little-endian (docs/FORMAT.md, coder 1 `range`). Version 2
splits a stream of n symbols into lane_count(n) contiguous lanes (varint word count of each lane but the
last, then the lanes' words); with one lane (n < 8192) that is exactly the version-1 body.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np

from edgeae.errors import CorruptStream

_LITTLE_ENDIAN = sys.byteorder == "little"
_WORD = np.dtype("<u4")
LANE_SYMBOLS = 4096  # lane rule of wire format v2 (fixed: changing it changes the format)
MAX_LANES = 256

Stream = tuple[np.ndarray, np.ndarray]  # (symbols, table index), flat, in coding order


def lane_bounds(n: int) -> np.ndarray:
    lanes = int(min(MAX_LANES, max(1, n // LANE_SYMBOLS)))
    return (np.arange(lanes + 1, dtype=np.int64) * n) // lanes


def _varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


class Tables:
    """Integer frequency tables of one stream family, with the coder's models built once."""

    def __init__(self, rows: Sequence[Sequence[int]], precision: int) -> None:
        import constriction

        self.precision = precision
        self.sizes = np.array([len(r) for r in rows], np.int64)
        probs = [np.asarray(r, np.float64) / float(1 << precision) for r in rows]  # exact
        model = constriction.stream.model
        self._models = [model.Categorical(p, perfect=False) for p in probs]
        self._enc, self._dec = constriction.stream.queue.RangeEncoder, constriction.stream.queue.RangeDecoder
        # One call per run of equal table index costs ~0.4 us; per-symbol rows ~0.2 us a symbol. When the runs
        # are this short on average and every row has one length, one call with a row per symbol is faster.
        self._rows = np.ascontiguousarray(np.stack(probs)) if len(set(self.sizes.tolist())) == 1 else None
        self._family = model.Categorical(perfect=False) if self._rows is not None else None

    def __len__(self) -> int:
        return len(self._models)

    def _runs(self, index: np.ndarray) -> tuple[list[tuple[int, int, int]], np.ndarray | None]:
        if not len(index):
            return [], None
        cuts = (np.flatnonzero(np.diff(index)) + 1).tolist()
        runs = [(int(index[a]), a, b) for a, b in zip([0, *cuts], [*cuts, len(index)], strict=True)]
        rows = self._rows[index] if self._rows is not None and len(index) < 2 * len(runs) else None
        return runs, rows

    def _encode_one(self, symbols: np.ndarray, index: np.ndarray) -> np.ndarray:
        encoder = self._enc()  # a fresh coder per stream (constriction 0.5's clear() can leave state behind)
        runs, rows = self._runs(index)
        if rows is not None:
            encoder.encode(symbols, self._family, rows)
        else:
            for t, a, b in runs:
                encoder.encode(symbols[a:b], self._models[t])
        return encoder.get_compressed()

    def _decode_one(self, words: np.ndarray, index: np.ndarray, what: str) -> np.ndarray:
        if len(words) > len(index) + 2:
            raise CorruptStream(f"{what}: the body holds more data than its {len(index)} symbols")
        decoder = self._dec(words)
        out = np.empty(len(index), np.int32)
        runs, rows = self._runs(index)
        try:
            if rows is not None:
                out[:] = decoder.decode(self._family, rows)
            else:
                for t, a, b in runs:
                    out[a:b] = decoder.decode(self._models[t], b - a)
        except Exception as exc:  # the coder raises AssertionError/ValueError on invalid data
            raise CorruptStream(f"{what}: the entropy-coded body is invalid ({exc})") from None
        if not decoder.maybe_exhausted():
            raise CorruptStream(f"{what}: the body holds more data than its {len(index)} symbols")
        return out

    def _check(self, symbols: np.ndarray, index: np.ndarray) -> None:
        if len(index) and (index.min() < 0 or index.max() >= len(self)):
            raise ValueError(f"table indices must be in 0..{len(self) - 1}")
        if len(symbols) and (symbols.min() < 0 or (symbols >= self.sizes[index]).any()):
            raise ValueError("symbols must be integers in 0..(table size - 1); quantise the latent first")

    def encode(self, streams: Sequence[Stream], lanes: bool = True) -> list[bytes]:
        """One body per stream; `lanes`: the v2 lane framing (else one v1 stream per body)."""
        out = []
        for symbols, index in streams:
            symbols = np.ascontiguousarray(symbols, np.int32).reshape(-1)
            index = np.ascontiguousarray(index, np.int64).reshape(-1)
            self._check(symbols, index)
            bounds = lane_bounds(len(symbols)) if lanes else np.array([0, len(symbols)])
            words = [self._encode_one(symbols[a:b], index[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            head = b"".join(_varint(len(w)) for w in words[:-1])
            data = np.concatenate(words) if len(words) > 1 else words[0]
            out.append(head + (data.tobytes() if _LITTLE_ENDIAN else data.astype(_WORD).tobytes()))
        return out

    def decode(self, bodies: Sequence[bytes], indices: Sequence[np.ndarray], lanes: bool = True,
               what: Sequence[str] | None = None) -> list[np.ndarray]:
        """Bodies + the table index of each of their symbols -> int32 symbols per body; CorruptStream for any
        invalid or over-long body (the coder never reads past a body, so a bad one cannot hang)."""
        out = []
        for i, (body, index) in enumerate(zip(bodies, indices, strict=True)):
            name = what[i] if what else f"item {i}"
            index = np.ascontiguousarray(index, np.int64).reshape(-1)
            bounds = lane_bounds(len(index)) if lanes else np.array([0, len(index)])
            sizes = np.diff(bounds).tolist()
            at, counts = 0, []
            for n in sizes[:-1]:
                v = shift = 0
                while True:
                    if at >= len(body):
                        raise CorruptStream(f"{name}: the lane table is cut short")
                    b = body[at]
                    at += 1
                    v |= (b & 0x7F) << shift
                    shift += 7
                    if v > n + 2:
                        raise CorruptStream(f"{name}: a lane of {v} words exceeds its bound of {n + 2}")
                    if not b & 0x80:
                        break
                counts.append(v)
            rest = len(body) - at - 4 * sum(counts)
            if rest < 0 or rest % 4:
                raise CorruptStream(f"{name}: the lane lengths do not match the body's {len(body)} bytes"
                                    if lanes else f"{name}: a range-coded body is whole 32-bit words, got "
                                    f"{len(body)} bytes")
            counts.append(rest // 4)
            words = np.frombuffer(body, _WORD, offset=at)
            words = words if _LITTLE_ENDIAN else words.astype(np.uint32)
            sym = np.empty(len(index), np.int32)
            w0 = 0
            for (a, b), nw in zip(zip(bounds[:-1], bounds[1:], strict=True), counts, strict=True):
                sym[a:b] = self._decode_one(np.ascontiguousarray(words[w0:w0 + nw]), index[a:b], name)
                w0 += nw
            out.append(sym)
        return out
