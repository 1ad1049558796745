"""The payload wire format (docs/FORMAT.md): pack coded items into bytes, and a strict, bounded parser.

Version 2 (written): each item carries its original image height and width and the coded parts its entropy
model defines (factorized: [y]; hyperprior: [z, y, escapes]). Version 3 (written for multi-quality bundles):
version 2 plus a `quality` byte after the model, the operating point of the bundle every item was coded at.
Version 1 (read only): one body per item, one latent shape for all, the bundle's fixed image size.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgeae.errors import BadMagic, ChecksumMismatch, CorruptStream, Truncated, UnsupportedVersion

MAGIC = b"\xea\xae"
VERSION = 2  # what `Packer` writes for a bundle of one quality
VERSION_QUALITY = 3  # ... and for a multi-quality bundle (the header's `quality` byte)
VERSIONS = (1, 2, 3)  # what `parse` reads
MAX_QUALITY = 255
FINGERPRINT_BYTES = 8
CRC_BYTES = 4

CODER_RANGE = 1
CODERS = {CODER_RANGE: "range"}  # coder id -> manifest `entropy.coder` name
CODER_IDS = {name: cid for cid, name in CODERS.items()}

# Entropy models (v2 header byte `model`) -> (manifest `entropy.model` name, minimum bytes of each coded part).
# A range-coded part that codes at least one symbol is at least one 32-bit word; the hyperprior's third part
# holds the varint escape values and is empty when no symbol escaped.
MODEL_FACTORIZED = 1
MODEL_HYPERPRIOR = 2
MODELS: dict[int, tuple[str, tuple[int, ...]]] = {
    MODEL_FACTORIZED: ("factorized", (4,)),
    MODEL_HYPERPRIOR: ("hyperprior", (4, 4, 0)),
}
MODEL_IDS = {name: mid for mid, (name, _) in MODELS.items()}

# Limits: every header field is checked against these before anything is sized from it.
MAX_PAYLOAD_BYTES = 64 << 20
MAX_HEADER_BYTES = 1 << 20
MAX_ITEMS = 1 << 16
MAX_SIDE = 1 << 16  # image height or width (v2)
MAX_ITEM_PIXELS = 1 << 25  # H x W of one item (v2): 33.5 Mpixel, e.g. 8192 x 4096
MAX_PAYLOAD_PIXELS = 1 << 26  # sum of H x W over a payload's items (v2)
MAX_NDIM = 6  # v1 latent rank
MAX_DIM = 1 << 24  # v1 latent dim
MAX_ITEM_SYMBOLS = 1 << 24  # v1 latent symbols per item; the runtime applies the same bound to v2 items
MAX_TOTAL_SYMBOLS = 1 << 25  # v1 symbols per payload; same for v2 in the runtime
MAX_BITS = 31
_VARINT_MAX_BYTES = 4  # values < 2**28: enough for MAX_PAYLOAD_BYTES, MAX_DIM and MAX_SIDE


@dataclass(frozen=True)
class Item:
    """One coded image: its original height and width and its entropy model's parts, in order.

    A v1 item has height = width = 0: "the bundle's fixed image size"."""

    height: int
    width: int
    parts: tuple[bytes, ...]

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def nbytes(self) -> int:
        return sum(len(p) for p in self.parts)


@dataclass(frozen=True)
class Header:
    """Everything before the bodies. `size` is the header's length in bytes, magic included."""

    fingerprint: bytes
    coder: int
    bits: int
    model: int  # entropy model id (v1: always factorized)
    sizes: tuple[tuple[int, int], ...]  # (height, width) per item; (0, 0) in v1
    parts: tuple[tuple[int, ...], ...]  # byte length of each coded part, per item
    shape: tuple[int, ...] = ()  # v1 only: the latent shape of every item
    quality: int = 0  # v3: the bundle's operating point 1..255 the items were coded at; 0 in v1 / v2
    version: int = VERSION
    size: int = 0

    @property
    def items(self) -> int:
        return len(self.parts)

    @property
    def lengths(self) -> tuple[int, ...]:
        """Body bytes per item (all its parts)."""
        return tuple(sum(p) for p in self.parts)

    @property
    def pixels(self) -> int:
        return sum(h * w for h, w in self.sizes)

    @property
    def total_size(self) -> int:
        """The exact byte length of the whole payload this header announces."""
        return self.size + sum(self.lengths) + CRC_BYTES


@dataclass(frozen=True)
class Payload:
    header: Header
    items: tuple[Item, ...]

    @property
    def bodies(self) -> tuple[bytes, ...]:
        """Each item's parts concatenated (a factorized item's one body)."""
        return tuple(it.parts[0] if len(it.parts) == 1 else b"".join(it.parts) for it in self.items)


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


# --- pack (versions 2 and 3) ---------------------------------------------------------------------------------


class Packer:
    """Frames coded items for one bundle; the fixed part of the header is built once (encode's hot path)."""

    def __init__(self, fingerprint: bytes, *, bits: int, coder: int = CODER_RANGE,
                 model: int = MODEL_FACTORIZED, quality: int = 0) -> None:
        """`quality` 1..255: the operating point of a multi-quality bundle (a version-3 payload); 0: none (v2)."""
        if len(fingerprint) < FINGERPRINT_BYTES:
            raise ValueError(f"fingerprint needs at least {FINGERPRINT_BYTES} bytes, got {len(fingerprint)}")
        if coder not in CODERS or not 0 <= bits <= MAX_BITS or model not in MODELS \
                or not 0 <= quality <= MAX_QUALITY:
            raise ValueError(f"coder {coder} / bits {bits} / entropy model {model} / quality {quality} cannot be "
                             "written")
        self.min_parts = MODELS[model][1]
        self.max_items = MAX_ITEMS
        self.version = VERSION_QUALITY if quality else VERSION
        self._version_byte = bytes([self.version])
        self._fixed = fingerprint[:FINGERPRINT_BYTES] + bytes([coder << 5 | bits, model, *([quality] if quality else [])])

    def pack(self, items: Sequence[Item]) -> bytes:
        n = len(items)
        if not 1 <= n <= self.max_items:
            raise ValueError(f"a payload holds 1..{self.max_items} items, got {n}; split the batch")
        first = (items[0].height, items[0].width)
        shared = all((it.height, it.width) == first for it in items)
        pixels = 0
        fields = [self._fixed, _varint(n), *(map(_varint, first) if shared else (_SMALL[0], _SMALL[0]))]
        for it in items:
            if not (1 <= it.height <= MAX_SIDE and 1 <= it.width <= MAX_SIDE and it.pixels <= MAX_ITEM_PIXELS):
                raise ValueError(f"an item of {it.height}x{it.width} pixels is outside the format's limits "
                                 f"(sides 1..{MAX_SIDE}, {MAX_ITEM_PIXELS} pixels)")
            pixels += it.pixels
            if len(it.parts) != len(self.min_parts) or any(len(p) < m for p, m in zip(it.parts, self.min_parts, strict=True)):
                raise ValueError(f"an item of this entropy model has {len(self.min_parts)} parts of at least "
                                 f"{self.min_parts} bytes, got {[len(p) for p in it.parts]}")
            if not shared:
                fields += [_varint(it.height), _varint(it.width)]
            fields += [_varint(len(p)) for p in it.parts]
        if pixels > MAX_PAYLOAD_PIXELS:
            raise ValueError(f"{pixels} pixels exceed one payload's {MAX_PAYLOAD_PIXELS}; split the batch")
        head = b"".join(fields)
        if len(head) > MAX_HEADER_BYTES:
            raise ValueError("payload header exceeds the format's limit; split the batch")
        out = b"".join([MAGIC, self._version_byte, _varint(len(head)), head, *(p for it in items for p in it.parts)])
        if len(out) + CRC_BYTES > MAX_PAYLOAD_BYTES:
            raise ValueError(f"payload of {len(out) + CRC_BYTES} bytes exceeds {MAX_PAYLOAD_BYTES}; split the batch")
        return out + zlib.crc32(out).to_bytes(CRC_BYTES, "little")


def pack(fingerprint: bytes, items: Sequence[Item], *, bits: int, coder: int = CODER_RANGE,
         model: int = MODEL_FACTORIZED, quality: int = 0) -> bytes:
    """Frame coded items as one payload. `fingerprint` is the bundle's (only its first 8 bytes are kept)."""
    return Packer(fingerprint, bits=bits, coder=coder, model=model, quality=quality).pack(items)


def pack_v1(fingerprint: bytes, shape: Sequence[int], bodies: Sequence[bytes], *, bits: int,
            coder: int = CODER_RANGE) -> bytes:
    """A version-1 payload (docs/FORMAT.md, "Version 1"): for decoders of edgeae 0.1 and compatibility tests.
    One latent shape for every item, one body each, the bundle's fixed image size."""
    shape = tuple(int(d) for d in shape)
    if not 1 <= len(bodies) <= MAX_ITEMS or not 1 <= len(shape) <= MAX_NDIM or not 0 <= bits <= MAX_BITS:
        raise ValueError("items, latent rank or bits outside version 1's limits")
    fields = b"".join([fingerprint[:FINGERPRINT_BYTES], bytes([coder << 5 | bits]), _varint(len(bodies)),
                       _varint(len(shape)), *map(_varint, shape), *(_varint(len(b)) for b in bodies)])
    out = b"".join([MAGIC, b"\x01", _varint(len(fields)), fields, *bodies])
    return out + zlib.crc32(out).to_bytes(CRC_BYTES, "little")


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
    if version not in VERSIONS:
        raise UnsupportedVersion(f"payload format version {version} is not supported (this edgeae reads "
                                 f"versions {', '.join(map(str, VERSIONS))}); use the edgeae release that wrote it")
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
    fields = _fields_v1(h, fingerprint, coder, bits) if version == 1 else _fields_v2(h, fingerprint, coder, bits,
                                                                                      quality=version == 3)
    if h.pos != end:
        raise CorruptStream(f"payload header has {end - h.pos} unexplained bytes; the payload is damaged")
    header = Header(**fields, version=version, size=end)
    if header.total_size > MAX_PAYLOAD_BYTES:
        raise CorruptStream(f"payload announces {header.total_size} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit")
    return header


def _fields_v1(h: _Reader, fingerprint: bytes, coder: int, bits: int) -> dict[str, Any]:
    items = h.varint("items", 1, MAX_ITEMS)
    ndim = h.varint("ndim", 1, MAX_NDIM)
    shape = tuple(h.varint("latent_shape", 1, MAX_DIM) for _ in range(ndim))
    symbols = math.prod(shape)
    if symbols > MAX_ITEM_SYMBOLS or symbols * items > MAX_TOTAL_SYMBOLS:
        raise CorruptStream(f"payload announces {items} items of shape {shape}, over the format's symbol limits")
    minimum = MODELS[MODEL_FACTORIZED][1][0]
    lengths = tuple((h.varint("item_length", minimum, MAX_PAYLOAD_BYTES),) for _ in range(items))
    return {"fingerprint": fingerprint, "coder": coder, "bits": bits, "model": MODEL_FACTORIZED,
            "sizes": ((0, 0),) * items, "parts": lengths, "shape": shape}


def _fields_v2(h: _Reader, fingerprint: bytes, coder: int, bits: int, quality: bool) -> dict[str, Any]:
    """Versions 2 and 3 (`quality`: the byte after the model)."""
    model = h.take(1, "model")[0]
    if model not in MODELS:
        raise CorruptStream(f"payload uses unknown entropy model id {model}; the payload is damaged or from a "
                            "newer edgeae")
    q = h.take(1, "quality")[0] if quality else 0
    if quality and q == 0:
        raise CorruptStream("payload quality is 0; a version-3 payload names its operating point 1..255")
    minimum = MODELS[model][1]
    items = h.varint("items", 1, MAX_ITEMS)
    height = h.varint("height", 0, MAX_SIDE)
    width = h.varint("width", 1 if height else 0, MAX_SIDE if height else 0)
    shared = height > 0
    sizes, parts, pixels = [], [], 0
    for _ in range(items):
        if not shared:
            height = h.varint("item height", 1, MAX_SIDE)
            width = h.varint("item width", 1, MAX_SIDE)
        if height * width > MAX_ITEM_PIXELS:
            raise CorruptStream(f"payload announces a {height}x{width} item, over the {MAX_ITEM_PIXELS}-pixel limit")
        pixels += height * width
        if pixels > MAX_PAYLOAD_PIXELS:
            raise CorruptStream(f"payload announces more than {MAX_PAYLOAD_PIXELS} pixels; the payload is damaged "
                                "or must be split")
        sizes.append((height, width))
        parts.append(tuple(h.varint("part_length", m, MAX_PAYLOAD_BYTES) for m in minimum))
    return {"fingerprint": fingerprint, "coder": coder, "bits": bits, "model": model, "sizes": tuple(sizes),
            "parts": tuple(parts), "quality": q}


def parse(data: bytes | bytearray | memoryview) -> Payload:
    """Strictly parse a whole payload: header, exact total size, CRC32, then split the items' parts."""
    if len(data) > MAX_PAYLOAD_BYTES:
        raise CorruptStream(f"payload of {len(data)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit")
    header = parse_header(data)
    total = header.total_size
    if len(data) < total:
        raise Truncated(f"payload has {len(data)} bytes but its header announces {total}; the payload is cut short")
    if len(data) > total:
        raise CorruptStream(f"payload has {len(data) - total} bytes after its checksum; the payload is damaged")
    data = bytes(data)  # no copy for bytes; parts are slices of it
    if zlib.crc32(memoryview(data)[: total - CRC_BYTES]) != int.from_bytes(data[total - CRC_BYTES :], "little"):
        raise ChecksumMismatch("payload checksum does not match; it was damaged in transit or storage")
    items, pos = [], header.size
    for (height, width), lengths in zip(header.sizes, header.parts, strict=True):
        parts = []
        for length in lengths:
            parts.append(data[pos : pos + length])
            pos += length
        items.append(Item(height, width, tuple(parts)))
    return Payload(header, tuple(items))


def fingerprint_prefix(fingerprint_hex: str) -> bytes:
    """The 8 bytes a payload carries for a manifest's sha256 hex fingerprint."""
    return bytes.fromhex(fingerprint_hex)[:FINGERPRINT_BYTES]


def _first(values: list[Any], n: int = 16) -> list[Any]:
    return values if len(values) <= n else [*values[:n], f"... {len(values) - n} more"]


def describe(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """A JSON-able description of a payload, without its bundle (for `edgeae inspect FILE.eae`)."""
    p = parse(data)
    h = p.header
    body = sum(h.lengths)
    info: dict[str, Any] = {
        "format_version": h.version,
        "fingerprint": h.fingerprint.hex(),
        "coder": CODERS[h.coder],
        "entropy_model": MODELS[h.model][0],
        **({"quality": h.quality} if h.quality else {}),
        "latent_bits": h.bits,
        "items": h.items,
    }
    if h.version == 1:
        info["latent_shape"] = list(h.shape)
    else:
        sizes = sorted(set(h.sizes))
        info["image_sizes"] = _first([f"{a}x{b}" for a, b in sizes])
        info["pixels"] = h.pixels
    info.update({
        "total_bytes": h.total_size,
        "body_bytes": body,
        "overhead_bytes": h.total_size - body,
        "bytes_per_item": round(h.total_size / h.items, 2),
    })
    if h.version == 1:
        info["bits_per_symbol"] = round(8 * body / (h.items * math.prod(h.shape)), 4)
    else:
        info["bits_per_pixel"] = round(8 * h.total_size / h.pixels, 4)
    info["item_bytes"] = _first(list(h.lengths))
    if len(h.parts[0]) > 1:
        info["part_bytes"] = _first([list(p) for p in h.parts])
    info["checksum"] = "ok"
    return info
