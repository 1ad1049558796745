"""The payload wire format (docs/FORMAT.md): pack item bodies into bytes, and a strict, bounded parser."""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgeae.errors import BadMagic, ChecksumMismatch, CorruptStream, Truncated, UnsupportedVersion

MAGIC = b"\xea\xae"
VERSION = 1
FINGERPRINT_BYTES = 8
CRC_BYTES = 4

CODER_RANGE = 1
CODERS = {CODER_RANGE: "range"}  # coder id -> manifest `entropy.coder` name
CODER_IDS = {name: cid for cid, name in CODERS.items()}

# Limits of version 1: every header field is checked against these before anything is sized from it.
MAX_PAYLOAD_BYTES = 64 << 20
MAX_HEADER_BYTES = 1 << 20
MAX_ITEMS = 1 << 16
MAX_NDIM = 6
MAX_DIM = 1 << 24
MAX_ITEM_SYMBOLS = 1 << 24
MAX_TOTAL_SYMBOLS = 1 << 25
MAX_BITS = 31
_VARINT_MAX_BYTES = 4  # values < 2**28: enough for MAX_PAYLOAD_BYTES and MAX_DIM
_VERSION_BYTE = bytes([VERSION])


@dataclass(frozen=True)
class Header:
    """Everything before the bodies. `size` is the header's length in bytes, magic included."""

    fingerprint: bytes
    coder: int
    bits: int
    shape: tuple[int, ...]
    lengths: tuple[int, ...]
    version: int = VERSION
    size: int = 0

    @property
    def items(self) -> int:
        return len(self.lengths)

    @property
    def symbols_per_item(self) -> int:
        return math.prod(self.shape)

    @property
    def total_size(self) -> int:
        """The exact byte length of the whole payload this header announces."""
        return self.size + sum(self.lengths) + CRC_BYTES


@dataclass(frozen=True)
class Payload:
    header: Header
    bodies: tuple[bytes, ...]


# --- LEB128 varints -------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _SMALL[value]
    if not 0 <= value < 1 << (7 * _VARINT_MAX_BYTES):
        raise ValueError(f"{value} does not fit a {_VARINT_MAX_BYTES}-byte varint")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_SMALL = [bytes([v]) for v in range(0x80)]


class _Reader:
    """A cursor over `data[pos:end]` that never reads past `end`; `short` is the error for running out."""

    __slots__ = ("data", "pos", "end", "short", "what")

    def __init__(self, data: bytes | bytearray | memoryview, pos: int, end: int, short: type[Exception],
                 what: str) -> None:
        self.data, self.pos, self.end, self.short, self.what = data, pos, end, short, what

    def _ran_out(self, field: str) -> Exception:
        return self.short(f"payload {self.what} ends inside {field}; the payload is cut short or damaged")

    def take(self, n: int, field: str) -> bytes:
        if self.pos + n > self.end:
            raise self._ran_out(field)
        chunk = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return chunk

    def varint(self, field: str, lo: int, hi: int) -> int:
        data, pos = self.data, self.pos
        value = shift = 0
        for i in range(_VARINT_MAX_BYTES):
            if pos >= self.end:
                raise self._ran_out(field)
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                if byte == 0 and i > 0:
                    raise CorruptStream(f"payload {field} is not a canonical varint; the payload is damaged")
                break
        else:
            raise CorruptStream(f"payload {field} varint is longer than {_VARINT_MAX_BYTES} bytes; the payload is damaged")
        self.pos = pos
        if not lo <= value <= hi:
            raise CorruptStream(f"payload {field} = {value} is outside {lo}..{hi}; the payload is damaged")
        return value


# --- pack ----------------------------------------------------------------------------------------------


class Packer:
    """Frames item bodies for one bundle; the fixed part of the header is built once (encode's hot path)."""

    def __init__(self, fingerprint: bytes, shape: Sequence[int], *, bits: int, coder: int = CODER_RANGE) -> None:
        if len(fingerprint) < FINGERPRINT_BYTES:
            raise ValueError(f"fingerprint needs at least {FINGERPRINT_BYTES} bytes, got {len(fingerprint)}")
        if coder not in CODERS or not 0 <= bits <= MAX_BITS:
            raise ValueError(f"coder {coder} / bits {bits} cannot be written")
        self.shape = tuple(int(d) for d in shape)
        if not 1 <= len(self.shape) <= MAX_NDIM or not all(1 <= d <= MAX_DIM for d in self.shape):
            raise ValueError(f"latent shape {self.shape} is outside the format's limits")
        self.symbols = math.prod(self.shape)
        if self.symbols > MAX_ITEM_SYMBOLS:
            raise ValueError(f"latent shape {self.shape} has more than {MAX_ITEM_SYMBOLS} symbols")
        self.max_items = min(MAX_ITEMS, MAX_TOTAL_SYMBOLS // self.symbols)
        self._fixed = fingerprint[:FINGERPRINT_BYTES] + bytes([coder << 5 | bits])
        self._shape = _varint(len(self.shape)) + b"".join(_varint(d) for d in self.shape)

    def pack(self, bodies: Sequence[bytes]) -> bytes:
        n = len(bodies)
        if not 1 <= n <= self.max_items:
            raise ValueError(f"a payload holds 1..{self.max_items} items of this latent, got {n}; split the batch")
        fields = b"".join([self._fixed, _varint(n), self._shape, *[_varint(len(b)) for b in bodies]])
        if len(fields) > MAX_HEADER_BYTES:
            raise ValueError("payload header exceeds the format's limit; split the batch")
        out = b"".join([MAGIC, _VERSION_BYTE, _varint(len(fields)), fields, *bodies])
        if len(out) + CRC_BYTES > MAX_PAYLOAD_BYTES:
            raise ValueError(f"payload of {len(out) + CRC_BYTES} bytes exceeds {MAX_PAYLOAD_BYTES}; split the batch")
        return out + zlib.crc32(out).to_bytes(CRC_BYTES, "little")


def pack(fingerprint: bytes, shape: Sequence[int], bodies: Sequence[bytes], *, bits: int,
         coder: int = CODER_RANGE) -> bytes:
    """Frame item bodies as one payload. `fingerprint` is the bundle's (only its first 8 bytes are kept)."""
    return Packer(fingerprint, shape, bits=bits, coder=coder).pack(bodies)


# --- parse ---------------------------------------------------------------------------------------------


def parse_header(data: bytes | bytearray | memoryview) -> Header:
    """Validate and read the header alone (works on a prefix of a payload; no bundle, no checksum)."""
    n = len(data)
    head = bytes(data[: len(MAGIC)])
    if head != MAGIC:
        if MAGIC.startswith(head):
            raise Truncated(f"payload has only {n} bytes; an edgeae payload starts with {MAGIC.hex()}")
        raise BadMagic(f"not an edgeae payload (starts with {head.hex() or 'nothing'}, expected {MAGIC.hex()})")
    if n <= len(MAGIC):
        raise Truncated("payload ends before its format version; the payload is cut short")
    version = data[len(MAGIC)]
    if version != VERSION:
        raise UnsupportedVersion(f"payload format version {version} is not supported (this edgeae reads "
                                 f"version {VERSION}); use the edgeae release that wrote it")
    r = _Reader(data, len(MAGIC) + 1, n, Truncated, "header")
    header_len = r.varint("header_length", FINGERPRINT_BYTES + 5, MAX_HEADER_BYTES)
    end = r.pos + header_len
    if end > n:
        raise Truncated(f"payload has {n} bytes but its header alone needs {end}; the payload is cut short")
    h = _Reader(data, r.pos, end, CorruptStream, "header (as long as header_length says)")
    fingerprint = h.take(FINGERPRINT_BYTES, "fingerprint")
    coder_bits = h.take(1, "coder_bits")[0]
    coder, bits = coder_bits >> 5, coder_bits & 0x1F
    if coder not in CODERS:
        raise CorruptStream(f"payload uses unknown coder id {coder}; the payload is damaged or from a newer edgeae")
    items = h.varint("items", 1, MAX_ITEMS)
    ndim = h.varint("ndim", 1, MAX_NDIM)
    shape = tuple(h.varint("latent_shape", 1, MAX_DIM) for _ in range(ndim))
    symbols = math.prod(shape)
    if symbols > MAX_ITEM_SYMBOLS or symbols * items > MAX_TOTAL_SYMBOLS:
        raise CorruptStream(f"payload announces {items} items of shape {shape}, over the format's symbol limits")
    lengths = tuple(h.varint("item_length", 0, MAX_PAYLOAD_BYTES) for _ in range(items))
    if h.pos != end:
        raise CorruptStream(f"payload header has {end - h.pos} unexplained bytes; the payload is damaged")
    header = Header(fingerprint, coder, bits, shape, lengths, version, size=end)
    if header.total_size > MAX_PAYLOAD_BYTES:
        raise CorruptStream(f"payload announces {header.total_size} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit")
    return header


def parse(data: bytes | bytearray | memoryview) -> Payload:
    """Strictly parse a whole payload: header, exact total size, CRC32, then split the item bodies."""
    if len(data) > MAX_PAYLOAD_BYTES:
        raise CorruptStream(f"payload of {len(data)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit")
    header = parse_header(data)
    total = header.total_size
    if len(data) < total:
        raise Truncated(f"payload has {len(data)} bytes but its header announces {total}; the payload is cut short")
    if len(data) > total:
        raise CorruptStream(f"payload has {len(data) - total} bytes after its checksum; the payload is damaged")
    data = bytes(data)  # no copy for bytes; bodies are slices of it
    if zlib.crc32(memoryview(data)[: total - CRC_BYTES]) != int.from_bytes(data[total - CRC_BYTES :], "little"):
        raise ChecksumMismatch("payload checksum does not match; it was damaged in transit or storage")
    bodies, pos = [], header.size
    for length in header.lengths:
        bodies.append(data[pos : pos + length])
        pos += length
    return Payload(header, tuple(bodies))


def fingerprint_prefix(fingerprint_hex: str) -> bytes:
    """The 8 bytes a payload carries for a manifest's sha256 hex fingerprint."""
    return bytes.fromhex(fingerprint_hex)[:FINGERPRINT_BYTES]


def describe(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """A JSON-able description of a payload, without its bundle (for `edgeae inspect FILE.eae`)."""
    p = parse(data)
    h = p.header
    body = sum(h.lengths)
    symbols = h.items * h.symbols_per_item
    lengths = list(h.lengths)
    return {
        "format_version": h.version,
        "fingerprint": h.fingerprint.hex(),
        "coder": CODERS[h.coder],
        "latent_bits": h.bits,
        "items": h.items,
        "latent_shape": list(h.shape),
        "total_bytes": h.total_size,
        "body_bytes": body,
        "overhead_bytes": h.total_size - body,
        "bytes_per_item": round(h.total_size / h.items, 2),
        "bits_per_symbol": round(8 * body / symbols, 4),
        "item_bytes": lengths if len(lengths) <= 16 else [*lengths[:16], f"... {len(lengths) - 16} more"],
        "checksum": "ok",
    }
