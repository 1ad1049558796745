"""Wire format (docs/FORMAT.md): round trip, documented overhead, and a strict parser that never lets damage through."""

from __future__ import annotations

import math
import zlib

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


@st.composite
def payload_parts(draw):
    shape = tuple(draw(st.lists(st.integers(1, 300), min_size=1, max_size=4)
                       .filter(lambda s: 20 * math.prod(s) <= wire.MAX_TOTAL_SYMBOLS)))
    bodies = draw(st.lists(st.binary(max_size=200), min_size=1, max_size=20))
    return {"fingerprint": draw(st.binary(min_size=8, max_size=8)), "shape": shape, "bodies": bodies,
            "bits": draw(st.integers(0, wire.MAX_BITS))}


def _pack(parts) -> bytes:
    return wire.pack(parts["fingerprint"], parts["shape"], parts["bodies"], bits=parts["bits"])


def _seal(without_crc: bytes) -> bytes:
    return without_crc + zlib.crc32(without_crc).to_bytes(4, "little")


def _header(fields: bytes) -> bytes:
    return wire.MAGIC + b"\x01" + bytes([len(fields)]) + fields


@settings(max_examples=200, deadline=None)
@given(payload_parts())
def test_pack_parse_round_trip_is_exact(parts):
    data = _pack(parts)
    p = wire.parse(data)
    assert p.header.fingerprint == parts["fingerprint"]
    assert p.header.shape == parts["shape"] and p.header.bits == parts["bits"]
    assert p.header.coder == wire.CODER_RANGE and p.header.version == wire.VERSION
    assert list(p.bodies) == parts["bodies"]
    assert p.header.total_size == len(data)
    # parse_header reads the same header from the header bytes alone
    assert wire.parse_header(data[: p.header.size]) == p.header
    assert wire.pack(p.header.fingerprint, p.header.shape, p.bodies, bits=p.header.bits) == data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload_parts())
def test_every_truncation_is_reported_as_truncated(parts):
    data = _pack(parts)
    for k in range(len(data)):
        with pytest.raises(Truncated):
            wire.parse(data[:k])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload_parts(), st.integers(1, 255))
def test_every_single_byte_change_raises_a_payload_error(parts, mask):
    data = _pack(parts)
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= mask
        with pytest.raises(PayloadError):
            wire.parse(bytes(bad))


def test_every_value_of_every_byte_of_a_small_payload_is_caught():
    data = wire.pack(FP, (8, 7, 7), [bytes(range(40))], bits=8)
    for i in range(len(data)):
        for value in range(256):
            if value == data[i]:
                continue
            bad = bytearray(data)
            bad[i] = value
            with pytest.raises(PayloadError):
                wire.parse(bytes(bad))


@pytest.mark.parametrize(("shape", "body", "overhead"), [
    ((32,), 40, 21),          # dense latent, small body
    ((8, 7, 7), 100, 23),     # MNIST conv latent, body < 128 B
    ((8, 7, 7), 300, 24),     # body needs a 2-byte length
    ((192, 16, 16), 1000, 25),
])
def test_one_item_overhead_is_as_documented(shape, body, overhead):
    data = wire.pack(FP, shape, [b"\x00" * body], bits=8)
    assert len(data) - body == overhead
    assert wire.describe(data)["overhead_bytes"] == overhead


def test_batch_overhead_is_as_documented():
    data = wire.pack(FP, (8, 7, 7), [b"\x00" * 300] * 64, bits=8)
    assert len(data) - 64 * 300 == 151


def test_describe_needs_no_bundle():
    info = wire.describe(wire.pack(FP, (8, 2, 2), [b"\x01" * 8, b"\x02" * 12], bits=8))
    assert info["fingerprint"] == FP.hex() and info["items"] == 2 and info["latent_shape"] == [8, 2, 2]
    assert info["coder"] == "range" and info["latent_bits"] == 8 and info["item_bytes"] == [8, 12]
    assert info["body_bytes"] == 20 and info["bits_per_symbol"] == round(8 * 20 / 64, 4)


def test_bad_magic_and_unknown_version():
    good = wire.pack(FP, (4,), [b"abcd"], bits=8)
    with pytest.raises(BadMagic):
        wire.parse(b"\x89PNG\r\n\x1a\n" + good)
    with pytest.raises(BadMagic):
        wire.parse(b"x")
    with pytest.raises(Truncated):
        wire.parse(wire.MAGIC[:1])
    for version in (0, 2, 255):
        with pytest.raises(UnsupportedVersion, match=f"version {version}"):
            wire.parse(good[:2] + bytes([version]) + good[3:])


def test_trailing_bytes_and_checksum():
    good = wire.pack(FP, (4,), [b"abcd"], bits=8)
    with pytest.raises(CorruptStream, match="after its checksum"):
        wire.parse(good + b"\x00")
    with pytest.raises(ChecksumMismatch):
        wire.parse(good[:-1] + bytes([good[-1] ^ 1]))


def test_header_fields_over_the_limits_are_refused_before_allocating():
    coder_bits = bytes([wire.CODER_RANGE << 5 | 8])
    cases = {
        # items = 2**16 + 1 (3-byte varint), shape (4,)
        "items": FP + coder_bits + b"\x81\x80\x04" + b"\x01\x04" + b"\x00",
        # ndim = 7
        "ndim": FP + coder_bits + b"\x01\x07" + b"\x01" * 7 + b"\x00",
        # one dim of 2**25
        "latent_shape": FP + coder_bits + b"\x01\x01" + b"\x80\x80\x80\x10" + b"\x00",
        # 2 dims of 2**13 = 2**26 symbols per item
        "symbol limits": FP + coder_bits + b"\x01\x02" + b"\x80\x40" * 2 + b"\x00",
        # body length of 2**27
        "item_length": FP + coder_bits + b"\x01\x01\x04" + b"\x80\x80\x80\x40",
        # a 5-byte varint
        "longer than": FP + coder_bits + b"\x01\x01\x04" + b"\x80\x80\x80\x80\x01",
        # non-canonical zero (0x80 0x00)
        "canonical": FP + coder_bits + b"\x01\x01\x04" + b"\x80\x00",
        # unknown coder id 3
        "coder id": FP + bytes([3 << 5 | 8]) + b"\x01\x01\x04\x00",
        # coder id 0 is reserved
        "coder id 0": FP + bytes([8]) + b"\x01\x01\x04\x00",
        # one byte the fields do not explain
        "unexplained": FP + coder_bits + b"\x01\x01\x04\x00" + b"\x00",
    }
    for what, fields in cases.items():
        with pytest.raises(CorruptStream, match=what.split()[0] if what != "coder id 0" else "coder id"):
            wire.parse(_seal(_header(fields)))


def test_header_length_beyond_the_data_is_truncated_and_huge_payloads_refused():
    with pytest.raises(Truncated):
        wire.parse(wire.MAGIC + b"\x01\x7f" + FP)
    with pytest.raises(CorruptStream, match="exceeds"):
        wire.parse(wire.MAGIC + b"\x01" + b"\x00" * wire.MAX_PAYLOAD_BYTES)


def test_pack_refuses_what_the_parser_would():
    with pytest.raises(ValueError):
        wire.pack(FP[:4], (4,), [b""], bits=8)
    with pytest.raises(ValueError):
        wire.pack(FP, (4,), [], bits=8)
    with pytest.raises(ValueError):
        wire.pack(FP, (1 << 13, 1 << 13), [b""], bits=8)
    with pytest.raises(ValueError):
        wire.pack(FP, (4,), [b""], bits=32)


def test_errors_carry_stable_codes():
    codes = {cls.code for cls in (BadMagic, UnsupportedVersion, Truncated, ChecksumMismatch, CorruptStream)}
    assert codes == {"bad_magic", "unsupported_version", "truncated", "checksum_mismatch", "corrupt_stream"}
