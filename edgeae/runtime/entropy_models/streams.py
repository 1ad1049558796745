"""Range-coded streams from flat symbols + a flat per-symbol table index, over integer tables.

The only place the entropy models reach the coder (edgeae/runtime/rangecoder.py, constriction or numpy,
byte-identical). Every table is a row of ints >= 1 summing to 2**precision (rows may differ in length).
Version 2 codes each body as lanes (rangecoder.lane_count: one lane below 2 x rangecoder.LANE_SYMBOLS
symbols, so small bodies are exactly version 1's); version-1 bodies are one stream each (docs/FORMAT.md,
coder 1 `range`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeae.runtime.rangecoder import RangeCoder, RangeTables, Stream


class Tables:
    """Integer frequency tables of one stream family and the active coder, built once per bundle."""

    def __init__(self, rows: Sequence[Sequence[int]], precision: int) -> None:
        self.coder = RangeCoder(RangeTables(rows, precision))
        self.sizes = self.coder.tables.sizes

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def backend(self) -> str:
        return self.coder.backend

    def encode(self, streams: Sequence[Stream], lanes: bool = True) -> list[bytes]:
        """One body per (symbols, table index) stream; `lanes`: v2 framing (else one v1 stream per body)."""
        return self.coder.encode_lanes(streams) if lanes else self.coder.encode(streams)

    def decode(self, bodies: Sequence[bytes], indices: Sequence[np.ndarray], lanes: bool = True,
               what: Sequence[str] | None = None) -> list[np.ndarray]:
        """Bodies + the table index of each of their symbols -> int32 symbols per body; CorruptStream for any
        invalid or over-long body (the coder never reads past a body, so a bad one cannot hang)."""
        return self.coder.decode_lanes(bodies, indices) if lanes else self.coder.decode(bodies, indices)
