"""`factorized`: one integer table per latent channel, clipping quantiser (docs/FORMAT.md, coder 1).

Per item, the symbols in channel-major order (the channel axis moved to the front, then row-major), channel c
coded with table c. The body bytes equal version 1's for the same symbols, so v1 and v2 payloads of one
image carry the same body. Any latent size works: the tables are per channel, not per position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeae.errors import CorruptStream
from edgeae.runtime import payload as wire
from edgeae.runtime.entropy_models import EntropyModel, Graphs
from edgeae.runtime.entropy_models.streams import Tables
from edgeae.runtime.manifest import Manifest
from edgeae.runtime.quantize import Quantizer


class Factorized(EntropyModel):
    name = "factorized"
    model_id = wire.MODEL_FACTORIZED

    def __init__(self, manifest: Manifest, graphs: Graphs | None = None) -> None:
        super().__init__(manifest, graphs)
        latent = manifest.latent
        self.quantizer = Quantizer(latent)
        self.levels = latent.quantization.levels
        self.axis = latent.channel_axis
        self.channels = latent.channels
        self.tables = Tables(manifest.entropy.frequencies, manifest.entropy.precision)
        self._index: dict[tuple[int, ...], np.ndarray] = {}

    def _plan(self, shape: tuple[int, ...]) -> np.ndarray:
        """The table index of every symbol of one item, in coding order (channel-major)."""
        index = self._index.get(shape)
        if index is None:
            if len(shape) != len(self.manifest.latent.shape) or shape[self.axis - 1] != self.channels:
                raise ValueError(f"a latent of shape {shape} does not have the bundle's {self.channels} channels")
            index = np.repeat(np.arange(self.channels), int(np.prod(shape)) // self.channels)
            if len(self._index) >= 64:  # many image sizes: keep the cache small (clear() is thread-safe)
                self._index.clear()
            self._index[shape] = index
        return index

    def _rows(self, q: np.ndarray) -> np.ndarray:
        if self.axis != 1:
            q = np.moveaxis(q, self.axis, 1)
        return np.ascontiguousarray(q, dtype=np.int32).reshape(len(q), -1)

    def quantize(self, y: np.ndarray) -> np.ndarray:
        """Float latents -> int32 symbols in 0 .. levels-1 (docs/MANIFEST.md)."""
        return self.quantizer.quantize(y)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return self.quantizer.dequantize(q)

    def encode_symbols(self, q: np.ndarray, lanes: bool = True) -> list[bytes]:
        """int symbols (n, *shape), each in 0 .. levels-1 -> one body per item (`lanes`: v2 framing)."""
        index = self._plan(tuple(q.shape[1:]))
        try:
            return self.tables.encode([(row, index) for row in self._rows(q)], lanes=lanes)
        except ValueError:
            raise ValueError(f"symbols must be integers in 0..{self.levels - 1}; quantise the latent first") from None

    def decode_symbols(self, bodies: Sequence[bytes], shape: tuple[int, ...], lanes: bool = True) -> np.ndarray:
        """One body per item -> int32 symbols (n, *shape); CorruptStream for any invalid body."""
        index = self._plan(shape)
        rows = np.stack(self.tables.decode(bodies, [index] * len(bodies), lanes=lanes)) if len(bodies) else \
            np.zeros((0, len(index)), np.int32)
        moved = list(shape)
        moved.insert(0, moved.pop(self.axis - 1))
        q = rows.reshape(len(bodies), *moved)
        return np.moveaxis(q, 1, self.axis) if self.axis != 1 else q

    def encode(self, y: np.ndarray, quality: int = 0) -> list[tuple[bytes, ...]]:
        return [(body,) for body in self.encode_symbols(self.quantize(y))]

    def decode(self, parts: Sequence[tuple[bytes, ...]], shape: tuple[int, ...], lanes: bool = True,
               quality: int = 0) -> np.ndarray:
        if any(len(p) != 1 for p in parts):
            raise CorruptStream("a factorized item has exactly one coded part")
        return self.dequantize(self.decode_symbols([p[0] for p in parts], shape, lanes))

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "tables": self.channels, "table_size": self.levels,
                "precision": self.manifest.entropy.precision}


MODEL = Factorized
