"""Wire format (docs/FORMAT.md): round trip, documented overhead, and a strict parser that never lets damage through.

Version 2 is what edgeae writes; version 1 payloads (edgeae 0.1) must still parse: both are fuzzed the same way,
and tests/data/v1 holds real golden v1 bytes.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeae.errors import (
    BadMagic,
    ChecksumMismatch,
    CorruptStream,
    PayloadError,
    Truncated,
    UnsupportedVersion,
)
from edgeae.runtime import payload as wire

FP = bytes(range(1, 9))
GOLDEN_V1 = Path(__file__).parent / "data" / "v1" / "batch3.eae"


@st.composite
def payload_items(draw):
    model = draw(st.sampled_from(sorted(wire.MODELS)))
    minimum = wire.MODELS[model][1]
    n = draw(st.integers(1, 12))
    side = st.integers(1, 2000)  # 12 items x 2000 x 2000 stay under MAX_PAYLOAD_PIXELS
    shared = draw(st.booleans())
    size = (draw(side), draw(side))
    items = []
    for _ in range(n):
        h, w = size if shared else (draw(side), draw(side))
        parts = tuple(draw(st.binary(min_size=m, max_size=m + 150)) for m in minimum)
        items.append(wire.Item(h, w, parts))
    return {"fingerprint": draw(st.binary(min_size=8, max_size=8)), "items": items, "model": model,
            "bits": draw(st.integers(0, wire.MAX_BITS))}


@st.composite
def v1_parts(draw):
    shape = tuple(draw(st.lists(st.integers(1, 300), min_size=1, max_size=4)
                       .filter(lambda s: 20 * math.prod(s) <= wire.MAX_TOTAL_SYMBOLS)))
    bodies = draw(st.lists(st.binary(min_size=4, max_size=200), min_size=1, max_size=20))
    return {"fingerprint": draw(st.binary(min_size=8, max_size=8)), "shape": shape, "bodies": bodies,
            "bits": draw(st.integers(0, wire.MAX_BITS))}


def _pack(parts) -> bytes:
    return wire.pack(parts["fingerprint"], parts["items"], bits=parts["bits"], model=parts["model"])


def _pack_v1(parts) -> bytes:
    return wire.pack_v1(parts["fingerprint"], parts["shape"], parts["bodies"], bits=parts["bits"])


def _seal(without_crc: bytes) -> bytes:
    return without_crc + zlib.crc32(without_crc).to_bytes(4, "little")


def _header(fields: bytes, version: int = 2) -> bytes:
    return wire.MAGIC + bytes([version]) + wire._varint(len(fields)) + fields


# --- version 2 ---------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(payload_items())
def test_pack_parse_round_trip_is_exact(parts):
    data = _pack(parts)
    p = wire.parse(data)
    h = p.header
    assert h.fingerprint == parts["fingerprint"] and h.bits == parts["bits"] and h.model == parts["model"]
    assert h.coder == wire.CODER_RANGE and h.version == wire.VERSION == 2
    assert list(p.items) == parts["items"]
    assert h.sizes == tuple((it.height, it.width) for it in parts["items"])
    assert h.total_size == len(data)
    assert wire.parse_header(data[: h.size]) == h  # the header alone, from the header bytes alone
    assert wire.pack(h.fingerprint, p.items, bits=h.bits, model=h.model) == data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload_items())
def test_every_truncation_is_reported_as_truncated(parts):
    data = _pack(parts)
    for k in range(len(data)):
        with pytest.raises(Truncated):
            wire.parse(data[:k])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload_items(), st.integers(1, 255))
def test_every_single_byte_change_raises_a_payload_error(parts, mask):
    data = _pack(parts)
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= mask
        with pytest.raises(PayloadError):
            wire.parse(bytes(bad))


@pytest.mark.parametrize("items", [
    [wire.Item(28, 28, (bytes(range(40)),))],
    [wire.Item(33, 47, (bytes(range(8)),)), wire.Item(1080, 1920, (bytes(range(12)),))],
])
def test_every_value_of_every_byte_of_a_small_payload_is_caught(items):
    data = wire.pack(FP, items, bits=8)
    for i in range(len(data)):
        for value in range(256):
            if value == data[i]:
                continue
            bad = bytearray(data)
            bad[i] = value
            with pytest.raises(PayloadError):
                wire.parse(bytes(bad))


@pytest.mark.parametrize(("size", "body", "overhead"), [
    ((28, 28), 100, 22),        # MNIST, body < 128 B (v1: 23)
    ((28, 28), 300, 23),        # body needs a 2-byte length (v1: 24)
    ((64, 64), 1000, 23),       # a thumbnail
    ((1080, 1920), 20000, 26),  # a full-HD frame: 2-byte sides, 3-byte length
])
def test_one_item_overhead_is_as_documented(size, body, overhead):
    data = wire.pack(FP, [wire.Item(*size, (b"\x00" * body,))], bits=8)
    assert len(data) - body == overhead
    assert wire.describe(data)["overhead_bytes"] == overhead


def test_hyperprior_item_overhead_is_as_documented():
    # z < 128 B, y 128 B .. 16 KiB, no escapes: one length byte more than factorized per extra part
    data = wire.pack(FP, [wire.Item(512, 768, (b"\x00" * 100, b"\x00" * 9000, b""))], bits=8,
                     model=wire.MODEL_HYPERPRIOR)
    assert len(data) - 9100 == 27


def test_batch_overhead_is_as_documented():
    data = wire.pack(FP, [wire.Item(28, 28, (b"\x00" * 300,))] * 64, bits=8)
    assert len(data) - 64 * 300 == 22 + 63 * 2 + 1 + 1  # 2-byte lengths, 2-byte header_length
    mixed = [wire.Item(28, 28 + i % 2, (b"\x00" * 300,)) for i in range(64)]  # two sizes: each item says its own
    assert len(wire.pack(FP, mixed, bits=8)) - 64 * 300 == 22 - 2 + 64 * 4 + 1 + 1


def test_describe_needs_no_bundle():
    data = wire.pack(FP, [wire.Item(8, 8, (b"\x01" * 8,)), wire.Item(33, 47, (b"\x02" * 12,))], bits=8)
    info = wire.describe(data)
    assert info["fingerprint"] == FP.hex() and info["items"] == 2 and info["image_sizes"] == ["8x8", "33x47"]
    assert info["coder"] == "range" and info["entropy_model"] == "factorized" and info["item_bytes"] == [8, 12]
    assert info["pixels"] == 64 + 33 * 47 and info["bits_per_pixel"] == round(8 * len(data) / (64 + 33 * 47), 4)
    hyper = wire.describe(wire.pack(FP, [wire.Item(64, 64, (b"\x01" * 4, b"\x02" * 8, b"\x03"))], bits=8,
                                    model=wire.MODEL_HYPERPRIOR))
    assert hyper["entropy_model"] == "hyperprior" and hyper["part_bytes"] == [[4, 8, 1]]


def test_bad_magic_and_unknown_version():
    good = wire.pack(FP, [wire.Item(2, 2, (b"abcd",))], bits=8)
    with pytest.raises(BadMagic):
        wire.parse(b"\x89PNG\r\n\x1a\n" + good)
    with pytest.raises(BadMagic):
        wire.parse(b"x")
    with pytest.raises(Truncated):
        wire.parse(wire.MAGIC[:1])
    for version in (0, 4, 255):
        with pytest.raises(UnsupportedVersion, match=f"version {version}"):
            wire.parse(good[:2] + bytes([version]) + good[3:])


def test_trailing_bytes_and_checksum():
    good = wire.pack(FP, [wire.Item(2, 2, (b"abcd",))], bits=8)
    with pytest.raises(CorruptStream, match="after its checksum"):
        wire.parse(good + b"\x00")
    with pytest.raises(ChecksumMismatch):
        wire.parse(good[:-1] + bytes([good[-1] ^ 1]))


def test_v2_header_fields_over_the_limits_are_refused_before_allocating():
    v = wire._varint
    head = FP + bytes([wire.CODER_RANGE << 5 | 8, wire.MODEL_FACTORIZED])
    cases = {
        "items": head + v(wire.MAX_ITEMS + 1) + v(8) + v(8) + v(4),
        "height": head + v(1) + v(wire.MAX_SIDE + 1) + v(8) + v(4),
        "width": head + v(1) + v(8) + v(0) + v(4),           # a shared height needs a shared width
        "width ": head + v(1) + v(0) + v(8) + v(4),          # no shared height: no shared width either
        "item height": head + v(1) + v(0) + v(0) + v(0) + v(8) + v(4),
        "pixel": head + v(1) + v(1 << 13) + v(1 << 13) + v(4),  # 2**26 pixels in one item
        "more than": head + v(5) + v(4096) + v(4096) + v(4) * 5,  # 5 x 2**24 pixels
        "part_length": head + v(1) + v(8) + v(8) + v(3),     # a range-coded part is at least one word
        "longer than": head + v(1) + v(8) + v(8) + b"\x80\x80\x80\x80\x01",
        "canonical": head + v(1) + v(8) + v(8) + b"\x84\x00",
        "coder id": FP + bytes([3 << 5 | 8, 1]) + v(1) + v(8) + v(8) + v(4),
        "entropy model": FP + bytes([wire.CODER_RANGE << 5 | 8, 9]) + v(1) + v(8) + v(8) + v(4),
        "unexplained": head + v(1) + v(8) + v(8) + v(4) + b"\x00",
    }
    for what, fields in cases.items():
        with pytest.raises(CorruptStream, match=what.strip()):
            wire.parse(_seal(_header(fields) + b"\x00" * 12))


def test_a_forged_payload_of_empty_bodies_is_refused_by_the_parser():
    """65,536 items announcing 0-byte (or 3-byte) bodies: refused from the header, before any decoding."""
    v = wire._varint
    head = FP + bytes([wire.CODER_RANGE << 5 | 8, wire.MODEL_FACTORIZED]) + v(wire.MAX_ITEMS) + v(1) + v(1)
    for length in (0, 3):
        with pytest.raises(CorruptStream, match="part_length = .* outside 4.."):
            wire.parse(_seal(_header(head + v(length) * wire.MAX_ITEMS) + b"\x00" * length * wire.MAX_ITEMS))
    hyper = FP + bytes([wire.CODER_RANGE << 5 | 8, wire.MODEL_HYPERPRIOR]) + v(1) + v(1) + v(1)
    with pytest.raises(CorruptStream, match="part_length"):
        wire.parse(_seal(_header(hyper + v(4) + v(0) + v(0)) + b"\x00" * 4))
    with pytest.raises(CorruptStream, match="item_length"):  # version 1 too
        wire.parse(wire.pack_v1(FP, (4,), [b""], bits=8))


def test_header_length_beyond_the_data_is_truncated_and_huge_payloads_refused():
    with pytest.raises(Truncated):
        wire.parse(wire.MAGIC + b"\x02\x7f" + FP)
    with pytest.raises(CorruptStream, match="exceeds"):
        wire.parse(wire.MAGIC + b"\x02" + b"\x00" * wire.MAX_PAYLOAD_BYTES)


def test_pack_refuses_what_the_parser_would():
    body = (b"abcd",)
    bad = [
        dict(fingerprint=FP[:4], items=[wire.Item(2, 2, body)]),
        dict(items=[]),
        dict(items=[wire.Item(0, 2, body)]),
        dict(items=[wire.Item(1 << 13, 1 << 13, body)]),
        dict(items=[wire.Item(4096, 4096, body)] * 5),
        dict(items=[wire.Item(2, 2, (b"abc",))]),
        dict(items=[wire.Item(2, 2, (b"abcd", b"abcd"))]),
        dict(items=[wire.Item(2, 2, body)], bits=32),
        dict(items=[wire.Item(2, 2, body)], model=7),
    ]
    for case in bad:
        kwargs = {"fingerprint": FP, "bits": 8, **case}
        with pytest.raises(ValueError):
            wire.pack(kwargs.pop("fingerprint"), kwargs.pop("items"), **kwargs)


def test_errors_carry_stable_codes():
    codes = {cls.code for cls in (BadMagic, UnsupportedVersion, Truncated, ChecksumMismatch, CorruptStream)}
    assert codes == {"bad_magic", "unsupported_version", "truncated", "checksum_mismatch", "corrupt_stream"}


# --- version 1 (read only) ----------------------------------------------------------------------------------


def test_golden_v1_bytes_still_parse():
    data = GOLDEN_V1.read_bytes()
    p = wire.parse(data)
    h = p.header
    assert h.version == 1 and h.items == 3 and h.shape == (4, 4, 4) and h.bits == 8 and h.model == 1
    assert h.sizes == ((0, 0),) * 3 and [len(it.parts) for it in p.items] == [1, 1, 1]
    assert sum(h.lengths) + h.size + 4 == len(data) == 221
    info = wire.describe(data)
    assert info["format_version"] == 1 and info["latent_shape"] == [4, 4, 4] and info["overhead_bytes"] == 25


@settings(max_examples=100, deadline=None)
@given(v1_parts())
def test_v1_parse_round_trip_is_exact(parts):
    data = _pack_v1(parts)
    p = wire.parse(data)
    assert p.header.version == 1 and p.header.shape == parts["shape"] and p.header.bits == parts["bits"]
    assert list(p.bodies) == parts["bodies"] and p.header.total_size == len(data)
    assert wire.parse_header(data[: p.header.size]) == p.header


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(v1_parts(), st.integers(1, 255))
def test_v1_every_truncation_and_byte_change_is_caught(parts, mask):
    data = _pack_v1(parts)
    for k in range(len(data)):
        with pytest.raises(Truncated):
            wire.parse(data[:k])
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= mask
        with pytest.raises(PayloadError):
            wire.parse(bytes(bad))


def test_v1_header_fields_over_the_limits_are_refused_before_allocating():
    coder_bits = bytes([wire.CODER_RANGE << 5 | 8])
    cases = {
        "items": FP + coder_bits + b"\x81\x80\x04" + b"\x01\x04" + b"\x04",
        "ndim": FP + coder_bits + b"\x01\x07" + b"\x01" * 7 + b"\x04",
        "latent_shape": FP + coder_bits + b"\x01\x01" + b"\x80\x80\x80\x10" + b"\x04",
        "symbol limits": FP + coder_bits + b"\x01\x02" + b"\x80\x40" * 2 + b"\x04",
        "item_length": FP + coder_bits + b"\x01\x01\x04" + b"\x80\x80\x80\x40",
        "longer than": FP + coder_bits + b"\x01\x01\x04" + b"\x80\x80\x80\x80\x01",
        "canonical": FP + coder_bits + b"\x01\x01\x04" + b"\x84\x00",
        "coder id": FP + bytes([3 << 5 | 8]) + b"\x01\x01\x04\x04",
        "coder id 0": FP + bytes([8]) + b"\x01\x01\x04\x04",
        "unexplained": FP + coder_bits + b"\x01\x01\x04\x04" + b"\x00",
    }
    for what, fields in cases.items():
        with pytest.raises(CorruptStream, match=what.split()[0] if what != "coder id 0" else "coder id"):
            wire.parse(_seal(_header(fields, version=1) + b"\x00" * 4))
