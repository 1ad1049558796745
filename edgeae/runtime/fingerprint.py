"""A bundle's fingerprint, recomputed from its bytes without onnx (torch-free, runtime side).

    fingerprint = sha256(graph_digest(encoder) || graph_digest(decoder) || tables_digest(latent, entropy)
                         || graph_digest(extra role) for each extra graph role, sorted by role name
                         || graph_digest(int8 twin) for each role whose manifest entry records int8_digest,
                            sorted by role name)

(int8 twins joined the fingerprint in December 2026; bundles exported before record no int8_digest and keep
their fingerprint, their int8 graphs bound only by the fingerprint in their metadata.)

`graph_digest` is the sha256 of an ONNX file's bytes with its top-level `metadata_props` (ModelProto field 14)
left out: the exporter hashes the model before writing the fingerprint into that metadata, and protobuf
writes fields in field-number order, so dropping those records from the file gives exactly the bytes it
hashed. `tables_digest` hashes the manifest's `latent` and `entropy` sections as written (canonical JSON).
The exporter (`edgeae.bundling.graphs`) uses these same functions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from edgeae.errors import BundleError

METADATA_FIELD = 14  # onnx.ModelProto.metadata_props
_KEY, _VALUE = 1, 2  # onnx.StringStringEntryProto


def _varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(10):
        if pos >= end:
            raise BundleError("ONNX graph ends inside a protobuf varint; the graph file is damaged (re-export)")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos
    raise BundleError("ONNX graph has an overlong protobuf varint; the graph file is damaged (re-export)")


def _fields(data: memoryview, pos: int = 0, end: int | None = None) -> Iterable[tuple[int, int, int, int, int]]:
    """(field, wire type, record start, value start, record end) of each top-level protobuf record."""
    end = len(data) if end is None else end
    while pos < end:
        start = pos
        key, pos = _varint(data, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            vstart = pos
            _, pos = _varint(data, pos, end)
        elif wire == 1:
            vstart, pos = pos, pos + 8
        elif wire == 5:
            vstart, pos = pos, pos + 4
        elif wire == 2:
            length, vstart = _varint(data, pos, end)
            pos = vstart + length
        else:
            raise BundleError(f"ONNX graph has protobuf wire type {wire}; not an ONNX model (re-export)")
        if pos > end or field == 0:
            raise BundleError("ONNX graph is cut short or damaged (a protobuf record runs past its end); re-export")
        yield field, wire, start, vstart, pos


def graph_digest(data: bytes) -> str:
    """sha256 hex of an ONNX model's bytes without its metadata_props: the exporter's graph digest."""
    mv = memoryview(data)
    h = hashlib.sha256()
    for field, _, start, _, end in _fields(mv):
        if field != METADATA_FIELD:
            h.update(mv[start:end])
    return h.hexdigest()


def graph_metadata(data: bytes) -> dict[str, str]:
    """The metadata_props of an ONNX model (key -> value), read without onnx."""
    mv = memoryview(data)
    out = {}
    for field, wire, _, vstart, end in _fields(mv):
        if field != METADATA_FIELD or wire != 2:
            continue
        entry = {}
        for f, w, _, vs, ve in _fields(mv, vstart, end):
            if f in (_KEY, _VALUE) and w == 2:
                entry[f] = bytes(mv[vs:ve]).decode("utf-8", "replace")
        out[entry.get(_KEY, "")] = entry.get(_VALUE, "")
    return out


def tables_digest(latent: dict[str, Any], entropy: dict[str, Any]) -> str:
    """sha256 hex of the manifest's latent and entropy sections (canonical JSON)."""
    canonical = json.dumps({"latent": latent, "entropy": entropy}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def fingerprint(encoder_digest: str, decoder_digest: str, tables: str, *extra: str) -> str:
    """sha256 over the graphs' and tables' digests; extra graphs' digests (the caller sorts them by role,
    e.g. hyper_decoder) follow, so a bundle without extra graphs has the fingerprint it always had."""
    h = hashlib.sha256()
    for part in (encoder_digest, decoder_digest, tables, *extra):
        h.update(bytes.fromhex(part))
    return h.hexdigest()
