"""The factorized entropy model's coding: exact integer round trip, the bitstream FORMAT.md describes (coder 1,
channel-major, v1 bodies and v2 lanes), compression, corrupt input. Both coder backends where installed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeae.bundling.calibrate import cross_entropy_bits, frequencies_from_probabilities
from edgeae.errors import CorruptStream
from edgeae.runtime import rangecoder
from edgeae.runtime.entropy_models.factorized import Factorized
from edgeae.runtime.manifest import EntropySpec, LatentSpec, Quantization, load_manifest

PRECISION = 16
# A real manifest to carry the test's latent and tables (only those two sections matter to the model).
BASE = load_manifest(Path(__file__).resolve().parents[1] / "edgeae" / "runtime" / "_selftest" / "bundle")
needs_constriction = pytest.mark.skipif(not rangecoder.constriction_available(), reason="constriction is not installed")


def make_coder(shape: tuple[int, ...], axis: int, levels: int, probs: np.ndarray | None = None,
               seed: int = 0) -> Factorized:
    """A factorized model over random (or given) tables; `coder.test_freqs` keeps the integer table."""
    channels = shape[axis - 1]
    if probs is None:
        probs = np.random.default_rng(seed).random((channels, levels)) ** 4  # uneven, some near zero
    freqs = frequencies_from_probabilities(probs, PRECISION)
    quant = Quantization(bits=int(np.ceil(np.log2(levels))), levels=levels, offset=(0.0,) * channels,
                         step=(1.0,) * channels)
    latent = LatentSpec(shape=shape, channel_axis=axis, quantization=quant)
    entropy = EntropySpec("range", PRECISION, tuple(tuple(int(v) for v in r) for r in freqs))
    coder = Factorized(dataclasses.replace(BASE, latent=latent, entropy=entropy))
    coder.test_freqs = freqs
    return coder


@st.composite
def coder_and_symbols(draw):
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    axis = draw(st.integers(1, len(shape)))
    levels = draw(st.sampled_from([2, 3, 16, 255, 256, 1000]))
    coder = make_coder(shape, axis, levels, seed=draw(st.integers(0, 2**16)))
    n = draw(st.integers(1, 4))
    q = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, levels, (n, *shape)).astype(np.int32)
    return coder, q, draw(st.booleans())


@settings(max_examples=150, deadline=None)
@given(coder_and_symbols())
def test_round_trip_is_exact_for_any_shape_axis_and_table(case):
    coder, q, lanes = case
    bodies = coder.encode_symbols(q, lanes=lanes)
    assert len(bodies) == len(q) and all(len(b) % 4 == 0 for b in bodies)  # small items: one lane, whole words
    out = coder.decode_symbols(bodies, q.shape[1:], lanes=lanes)
    assert out.dtype == np.int32 and out.shape == q.shape
    np.testing.assert_array_equal(out, q)


def _reference_body(coder: Factorized, item: np.ndarray, probs: np.ndarray) -> bytes:
    """Coder 1 exactly as docs/FORMAT.md words it: channel-major, one Categorical per channel, LE words."""
    import constriction

    moved = np.moveaxis(item, coder.axis - 1, 0).reshape(coder.channels, -1)
    enc = constriction.stream.queue.RangeEncoder()
    for c, symbols in enumerate(moved):
        enc.encode(np.ascontiguousarray(symbols, np.int32), constriction.stream.model.Categorical(probs[c], perfect=False))
    return enc.get_compressed().astype("<u4").tobytes()


@needs_constriction
@pytest.mark.parametrize(("shape", "axis"), [((8, 3, 3), 1), ((3, 8, 2), 2), ((16,), 1), ((4, 40, 60), 1)])
@pytest.mark.parametrize("backend", ["constriction", "numpy"])
def test_bitstream_is_the_documented_one(shape, axis, backend, monkeypatch):
    # (16,): one symbol per channel (constriction's per-symbol-rows path); (4, 40, 60): 9600 symbols = 4 lanes
    monkeypatch.setenv(rangecoder.ENV, backend)
    coder = make_coder(shape, axis, 256)
    assert coder.tables.backend == backend
    probs = coder.test_freqs / 2**PRECISION
    q = np.random.default_rng(1).integers(0, 256, (3, *shape)).astype(np.int32)
    v1 = coder.encode_symbols(q, lanes=False)
    assert v1 == [_reference_body(coder, item, probs) for item in q]
    n = q[0].size
    bounds = rangecoder.lane_bounds(n)
    for item, body in zip(q, coder.encode_symbols(q, lanes=True), strict=True):  # v2: each lane is coder 1
        flat = np.moveaxis(item, axis - 1, 0).reshape(-1)
        index = np.repeat(np.arange(coder.channels), n // coder.channels)
        lanes = [(flat[a:b], index[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        parts = coder.tables.coder.encode(lanes)
        assert body == b"".join(rangecoder._varint(len(p) // 4) for p in parts[:-1]) + b"".join(parts)
        assert len(parts) == rangecoder.lane_count(n)


def test_peaked_tables_compress_below_raw_size_and_near_the_ideal():
    levels, channels = 256, 8
    grid = np.arange(levels)
    probs = np.stack([np.exp(-0.5 * ((grid - 40 - 20 * c) / 3.0) ** 2) + 1e-6 for c in range(channels)])
    coder = make_coder((channels, 7, 7), 1, levels, probs=probs)
    rng = np.random.default_rng(0)
    norm = probs / probs.sum(1, keepdims=True)
    q = np.stack([np.stack([rng.choice(levels, size=(7, 7), p=norm[c]) for c in range(channels)])
                  for _ in range(20)]).astype(np.int32)
    bodies = coder.encode_symbols(q)
    raw_bytes = channels * 49 * 8 / 8
    ideal = [cross_entropy_bits(item[None], coder.test_freqs) / 8 for item in q]
    for body, best in zip(bodies, ideal, strict=True):
        assert len(body) < raw_bytes / 2
        assert len(body) <= best * 1.02 + 8  # range coder: within a word or two of the ideal code length
    np.testing.assert_array_equal(coder.decode_symbols(bodies, (channels, 7, 7)), q)


@pytest.mark.parametrize("lanes", [False, True])
def test_body_that_is_not_whole_words_is_corrupt(lanes):
    coder = make_coder((4, 2), 1, 16)
    body = coder.encode_symbols(np.zeros((1, 4, 2), np.int32), lanes=lanes)[0]
    with pytest.raises(CorruptStream, match="32-bit words" if not lanes else "lane"):
        coder.decode_symbols([body + b"\x00"], (4, 2), lanes=lanes)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64).map(lambda b: b[: len(b) - len(b) % 4]))
def test_arbitrary_bodies_decode_or_raise_corrupt_stream_never_anything_else(body):
    coder = make_coder((8, 2, 2), 1, 256)
    try:
        out = coder.decode_symbols([body], (8, 2, 2))
    except CorruptStream:
        return
    assert out.shape == (1, 8, 2, 2) and out.min() >= 0 and out.max() < 256


def test_symbols_outside_the_alphabet_or_shape_are_refused():
    coder = make_coder((4, 2), 1, 16)
    with pytest.raises(ValueError, match="0..15"):
        coder.encode_symbols(np.full((1, 4, 2), 16, np.int32))
    with pytest.raises(ValueError, match="channels"):
        coder.encode_symbols(np.zeros((1, 2, 4), np.int32))
