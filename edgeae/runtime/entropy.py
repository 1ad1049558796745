"""Integer symbols <-> item bodies: constriction's range coder with the manifest's per-channel tables.

The bitstream is coder 1 (`range`) of docs/FORMAT.md: per item, symbols in channel-major order, channel
c coded with Categorical(frequencies[c] / 2**precision, perfect=False), body = the coder's uint32 words
little-endian. Integer tables make the probabilities exact floats, so decoding is bit-exact anywhere.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import constriction
import numpy as np

from edgeae.errors import CorruptStream
from edgeae.runtime.manifest import EntropySpec, LatentSpec

_LITTLE_ENDIAN = sys.byteorder == "little"
_WORD = np.dtype("<u4")
# One coder call per channel costs ~0.4 us; per-symbol probability rows cost ~0.2 us a symbol. Below this
# many symbols per channel, one call with per-symbol rows is faster. Both produce identical bytes.
_ROWS_BELOW = 2


class SymbolCoder:
    """Entropy-codes batched integer latents (N, *latent.shape), one independent body per item."""

    def __init__(self, latent: LatentSpec, entropy: EntropySpec) -> None:
        if entropy.coder != "range":
            raise ValueError(f"unknown entropy coder {entropy.coder!r}")
        self.latent = latent
        self.levels = latent.quantization.levels
        self.channels = latent.channels
        self.per_channel = latent.symbols // self.channels  # symbols of one channel in one item
        # Channel-major order: the channel axis goes first within an item (axis 1 of the batch).
        self._axis = latent.channel_axis
        inner = list(latent.shape)
        inner.insert(0, inner.pop(self._axis - 1))
        self._moved_shape = tuple(inner)
        probs = np.asarray(entropy.frequencies, np.float64) / float(1 << entropy.precision)  # exact
        model = constriction.stream.model
        self._models = [model.Categorical(p, perfect=False) for p in probs]
        self._use_rows = self.per_channel < _ROWS_BELOW
        if self._use_rows:  # one row of probabilities per symbol of an item, in coding order
            self._family = model.Categorical(perfect=False)
            self._rows = np.ascontiguousarray(np.repeat(probs, self.per_channel, axis=0))

    # --- batch <-> (N, C, S) rows in coding order ---

    def to_rows(self, q: np.ndarray) -> np.ndarray:
        """(N, *latent.shape) -> int32 (N, C, S), C-contiguous, in coding order."""
        if q.shape[1:] != self.latent.shape:
            raise ValueError(f"symbols of shape {q.shape} do not match the latent (N, *{self.latent.shape})")
        if self._axis != 1:
            q = np.moveaxis(q, self._axis, 1)
        return np.ascontiguousarray(q, dtype=np.int32).reshape(len(q), self.channels, self.per_channel)

    def from_rows(self, rows: np.ndarray) -> np.ndarray:
        q = rows.reshape(len(rows), *self._moved_shape)
        return np.moveaxis(q, 1, self._axis) if self._axis != 1 else q

    # --- coding ---

    def encode(self, q: np.ndarray) -> list[bytes]:
        """int symbols (N, *latent.shape), each in 0 .. levels-1 -> one body per item."""
        rows = self.to_rows(q)
        encoder_cls = constriction.stream.queue.RangeEncoder
        models, bodies = self._models, []
        try:
            for item in rows:
                # A fresh coder per item: constriction 0.5's RangeEncoder.clear() can leave state behind that
                # adds a stray word to the next stream (seen on MNIST latents), so reuse is not safe.
                encoder = encoder_cls()
                if self._use_rows:
                    encoder.encode(item.reshape(-1), self._family, self._rows)
                else:
                    encode = encoder.encode
                    for symbols, model in zip(item, models):  # noqa: B905 (both have C entries)
                        encode(symbols, model)
                words = encoder.get_compressed()
                bodies.append(words.tobytes() if _LITTLE_ENDIAN else words.astype(_WORD).tobytes())
        except KeyError:  # constriction's answer to a symbol outside 0 .. levels-1
            raise ValueError(f"symbols must be integers in 0..{self.levels - 1}; quantise the latent first") from None
        return bodies

    def decode(self, bodies: Sequence[bytes]) -> np.ndarray:
        """One body per item -> int32 symbols (N, *latent.shape); CorruptStream for any invalid body."""
        rows = np.empty((len(bodies), self.channels, self.per_channel), np.int32)
        decoder_cls = constriction.stream.queue.RangeDecoder
        for i, body in enumerate(bodies):
            if len(body) % 4:
                raise CorruptStream(f"item {i}: a range-coded body is whole 32-bit words, got {len(body)} bytes")
            words = np.frombuffer(body, _WORD)
            decoder = decoder_cls(words if _LITTLE_ENDIAN else words.astype(np.uint32))
            try:
                if self._use_rows:
                    rows[i] = decoder.decode(self._family, self._rows).reshape(self.channels, self.per_channel)
                else:
                    for c, model in enumerate(self._models):
                        rows[i, c] = decoder.decode(model, self.per_channel)
            except Exception as exc:  # constriction raises AssertionError/ValueError on invalid data
                raise CorruptStream(f"item {i}: the entropy-coded body is invalid ({exc})") from None
            if not decoder.maybe_exhausted():
                raise CorruptStream(f"item {i}: the body holds more data than its {self.latent.symbols} symbols")
        return self.from_rows(rows)
