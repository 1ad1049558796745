"""One range-coded stream from flat symbols + a flat per-symbol table index, over integer tables.

The only place the entropy models reach the coder. Every table is a row of ints >= 1 summing to
2**precision (rows may differ in length); symbol s of table t is coded with probability row[s] / 2**precision.
The body is the coder's 32-bit words, little-endian (coder 1 `range` of docs/FORMAT.md).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np

from edgeae.errors import CorruptStream

_LITTLE_ENDIAN = sys.byteorder == "little"
_WORD = np.dtype("<u4")


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

    def plan(self, index: np.ndarray) -> Plan:
        """What coding symbols with these per-symbol table indices (flat, coding order) takes; reusable."""
        return Plan(self, np.ascontiguousarray(index, np.int64))

    def encode(self, symbols: np.ndarray, plan: Plan) -> bytes:
        """int32 symbols (flat, coding order), each < its table's size -> body bytes."""
        symbols = np.ascontiguousarray(symbols, np.int32)
        if len(symbols) != len(plan.index):
            raise ValueError(f"{len(symbols)} symbols for a plan of {len(plan.index)}")
        if len(symbols) and ((symbols < 0).any() or (symbols >= plan.sizes).any()):
            raise ValueError("a symbol is outside its table; map values to symbols first")
        encoder = self._enc()  # a fresh coder per stream (constriction 0.5's clear() can leave state behind)
        if plan.rows is not None:
            encoder.encode(symbols, self._family, plan.rows)
        else:
            models = self._models
            for t, a, b in plan.runs:
                encoder.encode(symbols[a:b], models[t])
        words = encoder.get_compressed()
        return words.tobytes() if _LITTLE_ENDIAN else words.astype(_WORD).tobytes()

    def decode(self, body: bytes, plan: Plan, what: str = "stream") -> np.ndarray:
        """Body bytes + the plan it was coded with -> int32 symbols; CorruptStream for any invalid or over-long
        body (the coder never reads past the body, so a bad body cannot hang)."""
        if len(body) % 4:
            raise CorruptStream(f"{what}: a range-coded body is whole 32-bit words, got {len(body)} bytes")
        words = np.frombuffer(body, _WORD)
        decoder = self._dec(words if _LITTLE_ENDIAN else words.astype(np.uint32))
        out = np.empty(len(plan.index), np.int32)
        try:
            if plan.rows is not None:
                out[:] = decoder.decode(self._family, plan.rows)
            else:
                models = self._models
                for t, a, b in plan.runs:
                    out[a:b] = decoder.decode(models[t], b - a)
        except Exception as exc:  # the coder raises AssertionError/ValueError on invalid data
            raise CorruptStream(f"{what}: the entropy-coded body is invalid ({exc})") from None
        if not decoder.maybe_exhausted():
            raise CorruptStream(f"{what}: the body holds more data than its {len(plan.index)} symbols")
        return out


class Plan:
    """The runs of equal table index of one symbol layout (one coder call each), or one row per symbol."""

    __slots__ = ("index", "sizes", "runs", "rows")

    def __init__(self, tables: Tables, index: np.ndarray) -> None:
        if len(index) and (index.min() < 0 or index.max() >= len(tables)):
            raise ValueError(f"table indices must be in 0..{len(tables) - 1}")
        self.index = index
        self.sizes = tables.sizes[index]
        cuts = np.flatnonzero(np.diff(index)) + 1 if len(index) else np.zeros(0, np.int64)
        starts = [0, *cuts.tolist()]
        ends = [*cuts.tolist(), len(index)]
        self.runs = [(int(index[a]), a, b) for a, b in zip(starts, ends, strict=True)] if len(index) else []
        per_symbol = tables._rows is not None and len(index) < 2 * len(self.runs)
        self.rows = np.ascontiguousarray(tables._rows[index]) if per_symbol else None
