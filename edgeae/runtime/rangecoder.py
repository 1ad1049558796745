"""constriction's range coder on integer tables, with two byte-identical backends: constriction and numpy.

The bitstream is constriction 0.5's `queue.RangeEncoder` (u32 words, u64 state, 24-bit precision) driven
by `stream.model.Categorical(frequencies / 2**precision, perfect=False)`: docs/FORMAT.md "Coder 1: range".
`constriction` is the fast path where it has a wheel (x86_64 Linux/Windows, macOS arm64); `numpy` needs
nothing but numpy and writes the same bytes, so payloads are interchangeable whatever each side installed.

    tables = RangeTables(frequencies, precision)          # K integer tables, built once per bundle
    coder = RangeCoder(tables)                            # $EDGEAE_CODER, else constriction if importable
    bodies = coder.encode([(symbols, table_index), ...])  # one stream per pair -> list[bytes]  (v1 bodies)
    symbols = coder.decode(bodies, [table_index, ...])    # -> list[int32 arrays]; CorruptStream if invalid
    bodies = coder.encode_lanes(...); coder.decode_lanes(...)   # one item as lanes (wire format v2)

`table_index[i]` names the table symbol i is coded with. The constriction backend makes one call per run
of equal table index, so callers order symbols in long runs (channel-major for per-channel tables).

**Tables.** For a table of n >= 2 integer frequencies f summing to 2**p, constriction's fast quantisation
(`from_floating_point_probabilities_fast`, what `perfect=False` uses) puts the left cumulative of symbol i
at `floor(C_i * (2**24 - n) / 2**p) + i`, C_i = f_0 + .. + f_(i-1), and ends the last symbol at 2**24. Its
float arithmetic is exact here (every partial sum is a multiple of 2**-p, the products fit in 53 bits), so
this integer formula is the same table. A one-symbol table (levels = 1) carries no information: its symbols
must be 0, are not coded and decode to 0 (constriction cannot build a one-symbol model; both backends skip
them). A table has at most MAX_TABLE = 2**24 - 2 entries, constriction's limit.

**numpy backend.** constriction's arithmetic per stream (u64 state, scale = range >> 24, one word per
renormalisation, the same seal), vectorised across streams: one loop over symbol positions doing numpy ops
on all streams still running (~4 per step to encode, ~17 to decode), per-symbol frequencies gathered
beforehand. The encoder's loop runs only the range recursion; lower is then assembled as the exact sum of
the steps' additions, 32-bit digit by digit with carries, which is what constriction's "inverted
situation" bookkeeping writes. The decoder maps a quantile to its symbol through a per-table lookup on
the quantile's top bits, with a binary search only where a bucket is shared by two symbols. Batches over
GROUP_SYMBOLS symbols are coded in groups of whole streams to bound memory (~60 bytes a symbol).

**Lanes (wire format v2).** One big item is a single stream, which numpy cannot vectorise, so
`encode_lanes` splits an item of n symbols into L = lane_count(n) contiguous lanes, lane i holding symbols
(i * n) // L .. ((i + 1) * n) // L - 1 (lengths differ by at most one), each an ordinary constriction stream. Body = varint word count of each lane but the
last, then every lane's words (LE u32), in lane order; with L = 1 it is exactly the v1 body. L follows
from n alone, so it is not stored: L = clamp(n // LANE_SYMBOLS, 1, MAX_LANES). Contiguous lanes (not
round-robin) keep a channel's symbols in one run per lane, so constriction makes ~C + L calls, not C * L.
Each lane costs ~3.2 bytes (its seal word, less the rounding it saves, plus a 1-byte varint).

Trade-off on a real 768x512 photo latent (32x64x96 = 196,608 symbols with the photos codec's own tables,
a 31.8 KB v1 body), numpy time / constriction time for the same lanes, CPU time, 1 thread, medians of 7,
on a shared 2-core host (load ~15; `benchmarks/bench_coder.py --bundle ...`, 14:27 run):

    symbols/lane  lanes  overhead          encode  decode
    v1 (1 stream)     1  -                 293x    404x   (numpy cannot vectorise one stream)
    4096             48  +177 B (0.56%)    10.7x    9.5x
    2048             96  +309 B (0.97%)     5.7x    4.7x   <- LANE_SYMBOLS: the ~1% budget
    1024            192  +575 B (1.81%)     3.8x    3.1x
     512            384  +1167 B (3.67%)    2.3x    1.7x

(synthetic 192x32x48, 60.8 KB: 2048/lane = 144 lanes, +503 B = 0.83%, 5.7x / 4.5x.) constriction codes
~7 ns a symbol (encode), ~30 ns (decode); the numpy coder pays ~1.5 us (encode) / ~12 us (decode) of numpy
call overhead per symbol position plus ~50 / ~60 ns per symbol, so its time is set by the longest lane
and, for encoding, by its per-symbol setup. MNIST-size batches (64 items of 8x7x7, v1): 1.9x / 3.7x.
Since 2026-12-03 every decode also re-encodes what it decoded (`_check_canonical`: bodies are canonical), so
decode times are ~30% above those measured before it, in both backends (constriction 8.8 ms, numpy 44.7 ms
for a 128x32x48 photo latent of issue 14's factorized codec at 2048/lane, of which 2.1 / 10.2 ms re-encode).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence

import numpy as np

from edgeae.errors import CorruptStream

PRECISION = 24  # constriction's DefaultRangeEncoder / Categorical precision
MAX_TABLE = (1 << PRECISION) - 2  # constriction refuses tables of 2**24 - 1 or more entries
ENV = "EDGEAE_CODER"
BACKENDS = ("constriction", "numpy")

# Lane rule of wire format v2 (fixed: changing it changes the format).
LANE_SYMBOLS = 2048
MAX_LANES = 4096

_LITTLE_ENDIAN = sys.byteorder == "little"
_WORD = np.dtype("<u4")
_U64 = np.uint64
_LOW32 = _U64(1 << 32)
# constriction's maybe_exhausted: after the last symbol, point - lower must be below 2**33 - 1.
_MAX_DIFFERENCE = _U64((1 << 33) - 1)
_LUT_ENTRIES = 1 << 21  # decode lookup: at most this many int32 entries over all tables (8 MiB)

Stream = tuple[np.ndarray, np.ndarray]  # (symbols, table index per symbol), same length


class RangeTables:
    """K integer frequency tables (1..MAX_TABLE entries, each >= 1, summing to 2**precision), quantised
    once. Table t occupies [start[t], start[t] + sizes[t]) of the concatenated arrays."""

    def __init__(self, frequencies: Sequence[Sequence[int]] | np.ndarray, precision: int) -> None:
        if not 1 <= precision <= PRECISION:
            raise ValueError(f"precision must be 1..{PRECISION}, got {precision}")
        rows = [np.asarray(r, dtype=np.int64).reshape(-1) for r in frequencies]
        if not rows:
            raise ValueError("at least one frequency table is needed")
        total = 1 << precision
        for t, r in enumerate(rows):
            if not 1 <= len(r) <= MAX_TABLE:
                raise ValueError(f"table {t} has {len(r)} entries; a table needs 1..{MAX_TABLE}")
            if r.min() < 1 or int(r.sum()) != total:
                raise ValueError(f"table {t} must hold integers >= 1 summing to 2**{precision}")
        self.precision = precision
        self._freqs = rows
        self.sizes = np.array([len(r) for r in rows], np.int64)
        self.degenerate = self.sizes == 1  # one-symbol tables: nothing to code
        self.any_degenerate = bool(self.degenerate.any())
        self.uniform = bool((self.sizes == self.sizes[0]).all())  # all tables of one size
        self.start = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        n_all = int(self.start[-1])
        if n_all >= 1 << 31:
            raise ValueError(f"the tables hold {n_all} entries in all; at most 2**31 - 1 are supported")
        left = np.empty(n_all, _U64)
        freq = np.empty(n_all, _U64)
        for t, r in enumerate(rows):
            n, a = len(r), int(self.start[t])
            if n == 1:
                left[a], freq[a] = 0, 1 << PRECISION
                continue
            c = np.concatenate([[0], np.cumsum(r[:-1])]).astype(_U64)  # exact integer cumulatives
            lft = ((c * _U64((1 << PRECISION) - n)) >> _U64(precision)) + np.arange(n, dtype=_U64)
            left[a:a + n] = lft
            freq[a:a + n] = np.append(lft[1:], _U64(1 << PRECISION)) - lft
        self.left, self.freq = left, freq
        # (2, entries + 1): left cumulatives over frequencies, for one gather of both; plus `invalid` (lookup)
        self.invalid = n_all
        self.left_freq_ext = np.stack([np.append(left, _U64(0)), np.append(freq, _U64(1))])
        self._lut: tuple[np.ndarray, np.ndarray, int] | None = None
        self._models: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.sizes)

    def probabilities(self, t: int) -> np.ndarray:
        return self._freqs[t].astype(np.float64) / float(1 << self.precision)  # exact

    def lookup(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Decode lookup over all tables: (lut, keys, bits). Row t has 2**bits + 1 buckets:
        lut[t * (2**bits + 1) + (q >> (24 - bits))] is the global index of the symbol holding quantile q,
        or -1 where two symbols share that bucket; the extra last bucket (q = 2**24, invalid data) holds
        `invalid`, an index past all tables whose entry (left 0, frequency 1) keeps the arithmetic going. keys =
        t * 2**24 + left cumulative, ascending, for a binary search in the shared buckets."""
        if self._lut is None:
            bits = int(min(16, max(0, np.floor(np.log2(_LUT_ENTRIES / len(self))))))
            buckets = np.arange(1 << bits, dtype=_U64) << _U64(PRECISION - bits)
            lut = np.empty((len(self), (1 << bits) + 1), np.int32)
            for t in range(len(self)):
                a, n = int(self.start[t]), int(self.sizes[t])
                lft = self.left[a:a + n]
                first = np.searchsorted(lft, buckets, side="right") - 1  # symbol at the bucket's start
                last = np.searchsorted(lft, buckets + _U64((1 << (PRECISION - bits)) - 1), side="right") - 1
                lut[t, :-1] = np.where(first == last, first + a, -1)
            lut[:, -1] = self.invalid
            tab = np.repeat(np.arange(len(self), dtype=_U64), self.sizes)
            keys = (tab << _U64(PRECISION)) + self.left
            self._lut = (lut.reshape(-1), keys, bits)  # int32 suffices: all tables hold < 2**31 entries
        return self._lut

    def check(self, symbols: np.ndarray, index: np.ndarray) -> None:
        if len(index) and (index.min() < 0 or index.max() >= len(self)):
            raise ValueError(f"table indices must be in 0..{len(self) - 1}")
        if not len(symbols):
            return
        if self.uniform:
            bad = symbols.min() < 0 or symbols.max() >= self.sizes[0]
        else:
            bad = symbols.min() < 0 or bool((symbols >= self.sizes[index]).any())
        if bad:
            raise ValueError("symbols must be integers in 0..(table size - 1); quantise the latent first")


# --------------------------------------------------------------------------------------------------
# Backends work on flat arrays: the streams' symbols and table indices concatenated, plus each stream's
# length; words likewise (concatenated uint32 words plus each stream's word count).


class _Backend:
    name = ""

    def encode_flat(self, tables: RangeTables, symbols: np.ndarray, index: np.ndarray,
                    lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (words, words per stream). Symbols are already checked against their tables."""
        raise NotImplementedError

    def decode_flat(self, tables: RangeTables, words: np.ndarray, nwords: np.ndarray, index: np.ndarray,
                    lengths: np.ndarray) -> np.ndarray:
        """-> int32 symbols, concatenated; CorruptStream for any stream that is not a valid encoding."""
        raise NotImplementedError


def _offsets(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


class ConstrictionBackend(_Backend):
    """One constriction call per run of equal table index; a fresh coder per stream (constriction 0.5's
    RangeEncoder.clear() can leave state behind that adds a stray word to the next stream)."""

    name = "constriction"
    # Below this mean run length (equal-size tables), one call with per-symbol probability rows
    # (constriction's lazy model: the same quantisation, the same bytes) beats one call per run.
    _ROWS_BELOW = 2.0
    _ROWS_MAX = 1 << 20  # probability entries in those rows

    def __init__(self) -> None:
        import constriction  # noqa: PLC0415 (optional dependency)

        self._c = constriction
        self._family = constriction.stream.model.Categorical(perfect=False)

    def _model(self, tables: RangeTables, t: int):
        m = tables._models.get(t)
        if m is None:
            m = tables._models[t] = self._c.stream.model.Categorical(tables.probabilities(t), perfect=False)
        return m

    def _plan(self, tables: RangeTables, index: np.ndarray):
        """-> ("rows", probability rows) or ("runs", [(a, b, t), ...]) over one stream's symbols."""
        if len(index) == 0:
            return "runs", []
        cuts = np.flatnonzero(index[1:] != index[:-1]) + 1
        bounds = np.concatenate([[0], cuts, [len(index)]]).tolist()
        nruns = len(bounds) - 1
        n0 = int(tables.sizes[0])
        if (len(index) < self._ROWS_BELOW * nruns and n0 > 1 and len(index) * n0 <= self._ROWS_MAX
                and (tables.sizes == n0).all()):
            return "rows", np.stack([tables.probabilities(t) for t in range(len(tables))])[index]
        starts = index[bounds[:-1]].tolist()
        deg = tables.degenerate
        return "runs", [(a, b, t) for a, b, t in zip(bounds[:-1], bounds[1:], starts, strict=True) if not deg[t]]

    def encode_flat(self, tables, symbols, index, lengths):
        off = _offsets(lengths)
        sym = np.ascontiguousarray(symbols, np.int32)
        out, counts = [], np.zeros(len(lengths), np.int64)
        for s in range(len(lengths)):
            a0, b0 = int(off[s]), int(off[s + 1])
            enc = self._c.stream.queue.RangeEncoder()
            kind, plan = self._plan(tables, index[a0:b0])
            if kind == "rows":
                enc.encode(sym[a0:b0], self._family, plan)
            else:
                for a, b, t in plan:
                    enc.encode(sym[a0 + a:a0 + b], self._model(tables, t))
            w = np.asarray(enc.get_compressed(), np.uint32)
            out.append(w)
            counts[s] = len(w)
        return (np.concatenate(out) if out else np.zeros(0, np.uint32)), counts

    def decode_flat(self, tables, words, nwords, index, lengths):
        off, woff = _offsets(lengths), _offsets(nwords)
        out = np.zeros(int(off[-1]), np.int32)
        for s in range(len(lengths)):
            a0, b0 = int(off[s]), int(off[s + 1])
            dec = self._c.stream.queue.RangeDecoder(np.ascontiguousarray(words[woff[s]:woff[s + 1]], np.uint32))
            kind, plan = self._plan(tables, index[a0:b0])
            try:
                if kind == "rows":
                    out[a0:b0] = dec.decode(self._family, plan)
                else:
                    for a, b, t in plan:
                        out[a0 + a:a0 + b] = dec.decode(self._model(tables, t), b - a)
            except Exception as exc:  # constriction raises AssertionError/ValueError on invalid data
                raise CorruptStream(f"stream {s}: the entropy-coded body is invalid ({exc})") from None
            if not dec.maybe_exhausted():
                raise CorruptStream(f"stream {s}: the body holds more data than its {b0 - a0} symbols")
        return out


class _Layout:
    """Streams sorted longest first, symbols laid out position-major: position j of the k_j streams still
    running occupies slots [start[j], start[j] + k_j), so each step of the loop works on array prefixes.
    Depends on the stream lengths only, so it is cached (a device codes the same shapes again and again)."""

    def __init__(self, lengths: np.ndarray) -> None:
        self.order = np.argsort(-lengths, kind="stable")
        ns = lengths[self.order]
        self.lengths = ns
        self.maxlen = int(ns[0]) if len(ns) else 0
        counts = np.bincount(ns, minlength=self.maxlen + 1)
        self.k = (len(ns) - np.cumsum(counts)[: self.maxlen]).astype(np.int64)  # streams longer than j
        self.start = _offsets(self.k)
        self.off = _offsets(lengths)  # stream offsets in the caller's concatenation
        # Slot -> index into the caller's concatenation, built per block of steps with the same k.
        starts = self.off[:-1][self.order]
        blocks, j = [], 0
        self.blocks: list[tuple[int, int, int]] = []  # (j0, j1, k): steps j0 .. j1-1 run the first k streams
        while j < self.maxlen:
            k = int(self.k[j])
            j1 = int(ns[k - 1])
            self.blocks.append((j, j1, k))
            blocks.append((starts[:k][None, :] + np.arange(j, j1, dtype=np.int64)[:, None]).reshape(-1))
            j = j1
        self.src = np.concatenate(blocks) if blocks else np.zeros(0, np.int64)
        self.inv = np.empty_like(self.src)  # caller position -> slot (gathering beats scattering)
        self.inv[self.src] = np.arange(len(self.src))
        self.sid = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)  # stream of each position


_LAYOUTS: dict[bytes, _Layout] = {}
_LAYOUTS_LOCK = threading.Lock()  # a decode server codes from several threads


_CACHE_SYMBOLS = 1 << 20  # layouts of bigger batches (24 bytes a symbol) are not kept


def _layout(lengths: np.ndarray) -> _Layout:
    key = lengths.astype(np.int64).tobytes()
    lay = _LAYOUTS.get(key)
    if lay is None:
        lay = _Layout(lengths)
        if len(lay.src) > _CACHE_SYMBOLS:
            return lay
        with _LAYOUTS_LOCK:
            while len(_LAYOUTS) >= 8:
                _LAYOUTS.pop(next(iter(_LAYOUTS)))
            _LAYOUTS[key] = lay
    return lay


def _drop_degenerate(tables: RangeTables, index: np.ndarray, lengths: np.ndarray):
    """-> (mask of coded symbols or None, coded lengths)."""
    if not tables.any_degenerate:
        return None, lengths
    keep = ~tables.degenerate[index]
    cs = _offsets(keep)
    off = _offsets(lengths)
    return keep, cs[off[1:]] - cs[off[:-1]]


class NumpyBackend(_Backend):
    """constriction's range coder in numpy, vectorised across streams (never a Python loop per symbol)."""

    name = "numpy"
    # Streams are coded in groups of at most this many symbols (whole streams), which bounds the working
    # memory (~60 bytes a symbol) at a small cost in speed for very large batches.
    GROUP_SYMBOLS = 1 << 22

    def encode_flat(self, tables, symbols, index, lengths):
        groups = _groups(lengths, self.GROUP_SYMBOLS)
        if len(groups) > 1:
            parts = [self._encode(tables, symbols[a:b], index[a:b], lengths[s0:s1]) for s0, s1, a, b in groups]
            return np.concatenate([w for w, _ in parts]), np.concatenate([n for _, n in parts])
        return self._encode(tables, symbols, index, lengths)

    def decode_flat(self, tables, words, nwords, index, lengths):
        groups = _groups(lengths, self.GROUP_SYMBOLS)
        if len(groups) > 1:
            woff = _offsets(nwords)
            return np.concatenate([self._decode(tables, words[woff[s0]:woff[s1]], nwords[s0:s1], index[a:b],
                                                lengths[s0:s1], s0) for s0, s1, a, b in groups])
        return self._decode(tables, words, nwords, index, lengths)

    def _encode(self, tables, symbols, index, lengths):
        keep, lengths = _drop_degenerate(tables, index, lengths)
        g = tables.start[index] + symbols
        if keep is not None:
            g = g[keep]
        lay = _layout(lengths)
        freq = tables.freq[g[lay.src]]  # position-major
        nstreams, total = len(lengths), len(g)
        scale = np.empty(total, _U64)  # range >> 24 at each step
        ren = np.empty(total, bool)  # the step renormalised (range fell below 2**32)
        rng = np.full(nstreams, np.iinfo(_U64).max, _U64)
        c24, c32 = _U64(24), _U64(32)
        # Only the range recursion is sequential; lower is a sum over the steps, assembled afterwards.
        for j0, j1, k in lay.blocks:  # steps j0 .. j1-1 all run the first k streams
            rg = rng[:k]
            a0, a1 = int(lay.start[j0]), int(lay.start[j1])
            scale_b, freq_b, ren_b = (x[a0:a1].reshape(-1, k) for x in (scale, freq, ren))
            for jj in range(j1 - j0):
                sc, rn = scale_b[jj], ren_b[jj]
                np.right_shift(rg, c24, out=sc)
                np.multiply(sc, freq_b[jj], out=rg)
                np.less(rg, _LOW32, out=rn)
                np.left_shift(rg, c32, out=rg, where=rn)
        del freq
        scale_s = np.take(scale, lay.inv, mode="wrap")  # in bounds; 'wrap' skips the bounds buffering
        ren_s = np.take(ren, lay.inv, mode="wrap")
        del scale, ren
        final_rng = np.empty(nstreams, _U64)
        final_rng[lay.order] = rng
        np.multiply(scale_s, tables.left[g], out=scale_s)
        return _assemble(lay, lengths, scale_s, ren_s, final_rng)

    def _decode(self, tables, words, nwords, index, lengths, first=0):
        nstreams = len(lengths)
        n_all = len(index)
        keep, lengths = _drop_degenerate(tables, index, lengths)
        for s in np.flatnonzero(nwords > lengths + 2):  # a valid stream has <= renormalisations + 2 words
            raise CorruptStream(f"stream {first + s}: the body holds more data than its {lengths[s]} coded symbols")
        coded_index = index if keep is None else index[keep]
        lay = _layout(lengths)
        lut, keys, bits = tables.lookup()
        row = _U64((1 << bits) + 1)
        t_pm = coded_index[lay.src]
        toff = t_pm.astype(_U64) * row  # lookup row of each slot's table

        # Words of each stream (caller's order) in a zero-padded region of length + 4: reads past the end
        # give 0, as in constriction, and a stream reads at most 2 + one word per symbol.
        region = lengths + 4
        rbase = _offsets(region)
        wbuf = np.zeros(int(rbase[-1]), _U64)
        woff = _offsets(nwords)
        wsid = np.repeat(np.arange(nstreams), nwords)
        wbuf[rbase[:-1][wsid] + np.arange(len(words)) - woff[:-1][wsid]] = words
        b0 = rbase[:-1][lay.order].astype(np.int64)
        diff = (wbuf[b0] << _U64(32)) | wbuf[b0 + 1]  # point - lower (lower starts at 0)
        rpos = b0 + 2
        rng = np.full(nstreams, np.iinfo(_U64).max, _U64)
        gsym = np.empty(len(lay.src), np.int32)  # global symbol index per slot; n_all = invalid quantile
        scale, tmp, q, fr, sh = (np.empty(nstreams, _U64) for _ in range(5))
        ren = np.empty(nstreams, bool)
        c24, c32 = _U64(24), _U64(32)
        cbits, cmax = _U64(PRECISION - bits), _U64(1 << PRECISION)
        lf = tables.left_freq_ext  # (2, entries + 1): left cumulatives over frequencies
        # State rows: d = point - lower, range, and a temporary; `dr` shifts d and range in one call, `tr`
        # (rows temporary, range) takes left * scale and frequency * scale in one multiply.
        state = np.empty((3, nstreams), _U64)
        state[0], state[1] = diff, rng
        with np.errstate(divide="ignore"):  # scale >= 2**8 always; guard anyway
            for j0, j1, k in lay.blocks:  # steps j0 .. j1-1 all run the first k streams: views made once
                d, rg, tp, dr, tr = state[0, :k], state[1, :k], state[2, :k], state[:2, :k], state[2:0:-1, :k]
                sc, qq, wd, rn, hh, rp = scale[:k], q[:k], fr[:k], ren[:k], sh[:k], rpos[:k]
                got = np.empty((2, k), _U64)
                a0, a1 = int(lay.start[j0]), int(lay.start[j1])
                toff_b = toff[a0:a1].reshape(-1, k)
                gsym_b = gsym[a0:a1].reshape(-1, k)
                for jj in range(j1 - j0):
                    gs = gsym_b[jj]
                    np.right_shift(rg, c24, out=sc)
                    np.floor_divide(d, sc, out=qq)
                    np.minimum(qq, cmax, out=qq)  # >= 2**24 is invalid data: the last bucket, a sentinel
                    np.right_shift(qq, cbits, out=tp)
                    np.add(tp, toff_b[jj], out=tp)
                    np.take(lut, tp.view(np.int64), out=gs, mode="wrap")  # in bounds; 'wrap' avoids buffering
                    if gs.min() < 0:  # a bucket shared by two or more symbols: binary search there
                        amb = np.flatnonzero(gs < 0)
                        tq = (toff_b[jj][amb] // row << c24) + qq[amb]
                        gs[amb] = np.searchsorted(keys, tq, side="right") - 1
                    np.take(lf, gs, axis=1, out=got, mode="wrap")
                    np.multiply(got, sc, out=tr)  # tp = left * scale, rg = frequency * scale
                    np.subtract(d, tp, out=d)
                    np.less(rg, _LOW32, out=rn)
                    np.take(wbuf, rp, out=wd, mode="wrap")
                    np.multiply(wd, rn, out=wd)  # the next word only where renormalising
                    np.add(rp, rn, out=rp)
                    np.multiply(rn, c32, out=hh)  # shift by 32 where renormalising, else 0
                    np.left_shift(dr, hh, out=dr)
                    np.bitwise_or(d, wd, out=d)
        diff, rng = state[0], state[1]
        consumed = rpos - b0  # 2 for the initial point + one per renormalisation
        exhausted = (nwords[lay.order] <= consumed) & ((lay.lengths == 0) | (diff < _MAX_DIFFERENCE))
        bad = np.zeros(nstreams, bool)  # by rank
        inv = np.flatnonzero(gsym == tables.invalid)  # constriction's InvalidData
        if len(inv):
            slot_rank = inv - lay.start[np.searchsorted(lay.start, inv, side="right") - 1]
            bad[slot_rank] = True
        for r in np.flatnonzero(bad | ~exhausted):
            s = int(lay.order[r])
            why = "is invalid" if bad[r] else f"holds more data than its {lengths[s]} coded symbols"
            raise CorruptStream(f"stream {first + s}: the entropy-coded body {why}")
        gsym -= tables.start[t_pm].astype(np.int32)
        coded = np.take(gsym, lay.inv, mode="wrap")
        if keep is None:
            return coded
        out = np.zeros(n_all, np.int32)
        out[keep] = coded
        return out


def _groups(lengths: np.ndarray, limit: int) -> list[tuple[int, int, int, int]]:
    """Consecutive runs of whole streams of at most `limit` symbols (a longer stream alone):
    (first stream, end stream, first symbol, end symbol)."""
    off = _offsets(lengths)
    if off[-1] <= limit:
        return [(0, len(lengths), 0, int(off[-1]))]
    out, s0 = [], 0
    while s0 < len(lengths):
        s1 = max(s0 + 1, int(np.searchsorted(off, off[s0] + limit, side="right")) - 1)
        out.append((s0, s1, int(off[s0]), int(off[s1])))
        s0 = s1
    return out


def _assemble(lay: _Layout, lengths: np.ndarray, add: np.ndarray, ren: np.ndarray,
              rng: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The encoder's words from its per-step record (streams concatenated in the caller's order).

    constriction keeps lower as a 64-bit window onto an exact number X = sum of the steps' additions
    `scale * left_cumulative`, each added at the window's position then: its high half at digit r, its
    low half at digit r + 1, r = renormalisations before the step. The words it writes are X's 32-bit
    digits 0 .. R-1 (R = the stream's renormalisations, carries included: that is what its "inverted"
    bookkeeping achieves), then the seal: digit R of X + 2**32 - 1 at digit R + 1 (the point), plus a zero
    word if the top word of lower + range equals the point's (nothing for a stream that coded no symbol).
    """
    off = lay.off
    cs = np.zeros(len(ren) + 1, np.int64)
    np.cumsum(ren, out=cs[1:])  # renormalisations before each position, all streams
    nren = cs[off[1:]] - cs[off[:-1]]
    dbase = _offsets(nren + 2)  # each stream's digits 0 .. R+1 (dbase[s] = cs[off[s]] + 2 s)
    pos = lay.sid * 2  # digit of each step's high half: dbase[s] + renormalisations before it in s
    pos += cs[:-1]
    digits = np.zeros(int(dbase[-1]), _U64)
    if len(pos):
        first = np.concatenate([[0], np.flatnonzero(pos[1:] != pos[:-1]) + 1])
        at = pos[first]
        digits[at] += np.add.reduceat(add >> _U64(32), first)
        digits[at + 1] += np.add.reduceat(add & _U64(0xFFFFFFFF), first)  # < 2**24 terms < 2**32 each
    _normalise(digits)
    coded = lengths > 0
    top = dbase[:-1] + nren  # digit R: the window's high word at the end
    lower = (digits[top] << _U64(32)) | digits[top + 1]
    point = lower + _U64((1 << 32) - 1)
    extra = coded & (((lower + rng) >> _U64(32)) == (point >> _U64(32)))
    digits[top + 1] += _U64((1 << 32) - 1)
    _normalise(digits)
    digits[top + 1] = 0  # the extra zero word where it is written, else dropped below
    keep = np.ones(len(digits), bool)
    keep[top[~extra] + 1] = False
    keep[top[~coded]] = False
    nwords = np.where(coded, nren + 1 + extra, 0).astype(np.int64)
    return digits[keep].astype(np.uint32), nwords


def _normalise(digits: np.ndarray) -> None:
    """Propagate carries: every digit < 2**32 afterwards, the excess moved to the digit before (towards
    the stream's first word; constriction's invariant keeps every carry inside its own stream)."""
    for _ in range(2):  # digit sums reach 2**57: two dense passes leave carries of at most 1
        carry = digits >> _U64(32)
        if not carry.any():
            return
        digits &= _U64(0xFFFFFFFF)
        digits[:-1] += carry[1:]
    over = np.flatnonzero(digits >> _U64(32))
    while len(over):  # the rare run of 0xFFFFFFFF digits, one step at a time
        digits[over] &= _U64(0xFFFFFFFF)
        np.add.at(digits, over - 1, _U64(1))
        over = np.flatnonzero(digits >> _U64(32))


# --------------------------------------------------------------------------------------------------
# Selection


_INSTANCES: dict[str, _Backend] = {}


def constriction_available() -> bool:
    try:
        import constriction  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def backend_name(name: str | None = None) -> str:
    """The backend a coder uses: `name`, else $EDGEAE_CODER, else constriction if importable, else numpy."""
    name = name or os.environ.get(ENV, "").strip().lower() or None
    if name is None:
        return "constriction" if constriction_available() else "numpy"
    if name not in BACKENDS:
        raise ValueError(f"{ENV}={name!r} is not an entropy coder backend; use one of: {', '.join(BACKENDS)}")
    if name == "constriction" and not constriction_available():
        raise ValueError(f"{ENV}=constriction but constriction is not installed; pip install 'edgeae[fast]' "
                         f"(x86_64 and macOS arm64 only) or unset {ENV} to use the numpy coder")
    return name


def get_backend(name: str | None = None) -> _Backend:
    name = backend_name(name)
    if name not in _INSTANCES:
        _INSTANCES[name] = ConstrictionBackend() if name == "constriction" else NumpyBackend()
    return _INSTANCES[name]


# --------------------------------------------------------------------------------------------------
# The coder: streams <-> bodies (v1: one stream per body) and lane framing (v2)


def lane_count(n: int) -> int:
    """Lanes of an item of n symbols in wire format v2."""
    return int(min(MAX_LANES, max(1, n // LANE_SYMBOLS)))


def lane_bounds(n: int) -> np.ndarray:
    lanes = lane_count(n)
    return (np.arange(lanes + 1, dtype=np.int64) * n) // lanes


def _varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _read_varint(body: bytes, at: int, limit: int, what: str) -> tuple[int, int]:
    v, shift = 0, 0
    while True:
        if at >= len(body):
            raise CorruptStream(f"{what}: the lane table is cut short")
        b = body[at]
        at += 1
        v |= (b & 0x7F) << shift
        if v > limit:
            raise CorruptStream(f"{what}: a lane of {v} words exceeds its bound of {limit}")
        if not b & 0x80:
            return v, at
        shift += 7


def _flatten(streams: Sequence[Stream]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    syms, idxs, lengths = [], [], np.zeros(len(streams), np.int64)
    for i, (symbols, index) in enumerate(streams):
        symbols = np.asarray(symbols).reshape(-1)
        index = np.asarray(index).reshape(-1)
        if len(symbols) != len(index):
            raise ValueError(f"stream {i} has {len(symbols)} symbols but {len(index)} table indices")
        if symbols.dtype.kind not in "iub" or index.dtype.kind not in "iub":
            raise ValueError("symbols and table indices must be integer arrays; quantise the latent first")
        syms.append(symbols)
        idxs.append(index)
        lengths[i] = len(symbols)
    if not streams:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), lengths
    if len(streams) == 1:
        return syms[0].astype(np.int64, copy=False), idxs[0].astype(np.int64, copy=False), lengths
    return np.concatenate(syms).astype(np.int64, copy=False), np.concatenate(idxs).astype(np.int64, copy=False), lengths


class RangeCoder:
    """Encodes and decodes streams over fixed tables with one backend (see the module docstring)."""

    def __init__(self, tables: RangeTables, backend: str | None = None) -> None:
        self.tables = tables
        self._backend = get_backend(backend)

    @property
    def backend(self) -> str:
        return self._backend.name

    # --- flat arrays (what the entropy layer uses) ---

    def encode_flat(self, symbols: np.ndarray, index: np.ndarray,
                    lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Concatenated streams -> (concatenated uint32 words, words per stream)."""
        symbols = np.asarray(symbols, np.int64).reshape(-1)
        index = np.asarray(index, np.int64).reshape(-1)
        lengths = np.asarray(lengths, np.int64).reshape(-1)
        if len(symbols) != len(index) or int(lengths.sum()) != len(symbols) or (lengths < 0).any():
            raise ValueError("symbols, table indices and stream lengths do not match")
        self.tables.check(symbols, index)
        return self._backend.encode_flat(self.tables, symbols, index, lengths)

    def decode_flat(self, words: np.ndarray, nwords: np.ndarray, index: np.ndarray,
                    lengths: np.ndarray) -> np.ndarray:
        index = np.asarray(index, np.int64).reshape(-1)
        lengths = np.asarray(lengths, np.int64).reshape(-1)
        nwords = np.asarray(nwords, np.int64).reshape(-1)
        if int(lengths.sum()) != len(index) or len(nwords) != len(lengths) or int(nwords.sum()) != len(words):
            raise ValueError("words, word counts, table indices and stream lengths do not match")
        if len(index) and (index.min() < 0 or index.max() >= len(self.tables)):
            raise ValueError(f"table indices must be in 0..{len(self.tables) - 1}")
        for s in np.flatnonzero(nwords > lengths + 2):  # also bounds what the backends allocate
            raise CorruptStream(f"stream {s}: the body holds more data than its {lengths[s]} symbols")
        words = np.asarray(words, np.uint32)
        symbols = self._backend.decode_flat(self.tables, words, nwords, index, lengths)
        self._check_canonical(symbols, index, lengths, words, nwords)
        return symbols

    def _check_canonical(self, symbols: np.ndarray, index: np.ndarray, lengths: np.ndarray, words: np.ndarray,
                         nwords: np.ndarray) -> None:
        """CorruptStream unless the words are exactly what the encoder writes for the decoded symbols.

        The decoder alone cannot see every alteration: it never reads a stream's last word past what its
        symbols need, so a word appended to a stream (or any words given to an empty one) decoded as if absent,
        and one image had many payloads. Re-encoding costs the encoder's time (constriction ~7 ns a symbol
        against ~30 to decode) and makes every accepted body the one canonical body of its symbols."""
        again, counts = self._backend.encode_flat(self.tables, symbols.astype(np.int64), index, lengths)
        if np.array_equal(counts, nwords) and np.array_equal(again, words):
            return
        off, off2 = _offsets(nwords), _offsets(counts)
        for s in range(len(nwords)):
            if not np.array_equal(words[off[s]:off[s + 1]], again[off2[s]:off2[s + 1]]):
                raise CorruptStream(f"stream {s}: the body is not the encoding of the symbols it decodes to "
                                    "(extra or altered words); the payload is damaged")

    # --- v1: one stream per body ---

    def encode(self, streams: Sequence[Stream]) -> list[bytes]:
        """(symbols, table index) per stream -> one body (little-endian u32 words) per stream."""
        words, nwords = self.encode_flat(*_flatten(streams))
        data = words.tobytes() if _LITTLE_ENDIAN else words.astype(_WORD).tobytes()
        off = (_offsets(nwords) * 4).tolist()
        return [data[off[i]:off[i + 1]] for i in range(len(nwords))]

    def decode(self, bodies: Sequence[bytes], indices: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One body per stream plus its table index per symbol -> int32 symbols; CorruptStream if invalid."""
        if len(bodies) != len(indices):
            raise ValueError(f"{len(bodies)} bodies but {len(indices)} table-index arrays")
        for i, body in enumerate(bodies):
            if len(body) % 4:
                raise CorruptStream(f"item {i}: a range-coded body is whole 32-bit words, got {len(body)} bytes")
        idx = [np.asarray(ix, np.int64).reshape(-1) for ix in indices]
        lengths = np.array([len(ix) for ix in idx], np.int64)
        nwords = np.array([len(b) // 4 for b in bodies], np.int64)
        for s in np.flatnonzero(nwords > lengths + 2):  # before joining anything
            raise CorruptStream(f"item {s}: the body holds more data than its {lengths[s]} symbols")
        words = np.frombuffer(b"".join(bodies), _WORD).astype(np.uint32)
        flat = self.decode_flat(words, nwords, np.concatenate(idx) if idx else np.zeros(0, np.int64), lengths)
        off = _offsets(lengths)
        return [flat[off[i]:off[i + 1]] for i in range(len(lengths))]

    # --- v2: one body per item, its symbols in lanes ---

    def encode_lanes(self, streams: Sequence[Stream]) -> list[bytes]:
        """Like encode, but each item is split into lane_count(n) lanes (module docstring: Lanes)."""
        symbols, index, lengths = _flatten(streams)
        lane_len = np.concatenate([np.diff(lane_bounds(int(n))) for n in lengths]) if len(lengths) else lengths
        words, nwords = self.encode_flat(symbols, index, lane_len)
        data = words.tobytes() if _LITTLE_ENDIAN else words.astype(_WORD).tobytes()
        woff = (_offsets(nwords) * 4).tolist()
        out, lane = [], 0
        for n in lengths.tolist():
            lanes = lane_count(n)
            head = b"".join(_varint(int(w)) for w in nwords[lane:lane + lanes - 1])
            out.append(head + data[woff[lane]:woff[lane + lanes]])
            lane += lanes
        return out

    def decode_lanes(self, bodies: Sequence[bytes], indices: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(bodies) != len(indices):
            raise ValueError(f"{len(bodies)} bodies but {len(indices)} table-index arrays")
        idx = [np.asarray(ix, np.int64).reshape(-1) for ix in indices]
        lane_len, nwords, chunks = [], [], []
        for i, (body, index) in enumerate(zip(bodies, idx, strict=True)):
            sizes = np.diff(lane_bounds(len(index)))
            at, counts = 0, []
            for n in sizes[:-1].tolist():
                w, at = _read_varint(body, at, n + 2, f"item {i}")
                counts.append(w)
            rest = len(body) - at - 4 * sum(counts)
            if rest < 0 or rest % 4:
                raise CorruptStream(f"item {i}: the lane lengths do not match the body's {len(body)} bytes")
            if rest // 4 > sizes[-1] + 2:
                raise CorruptStream(f"item {i}: the last lane holds more data than its {sizes[-1]} symbols")
            counts.append(rest // 4)
            lane_len.append(sizes)
            nwords += counts
            chunks.append(body[at:])
        words = np.frombuffer(b"".join(chunks), _WORD).astype(np.uint32)
        lengths = np.array([len(ix) for ix in idx], np.int64)
        flat = self.decode_flat(words, np.array(nwords, np.int64),
                                np.concatenate(idx) if idx else np.zeros(0, np.int64),
                                np.concatenate(lane_len) if lane_len else np.zeros(0, np.int64))
        off = _offsets(lengths)
        return [flat[off[i]:off[i + 1]] for i in range(len(lengths))]
