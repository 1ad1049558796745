"""A bundle folder on disk: its validated manifest, every file checked against the manifest's sha256, and the
fingerprint recomputed from the graphs and tables (edgeae.runtime.fingerprint), so a bundle is bound to the
fingerprint its payloads carry. Sessions are built from `graph_bytes`: the bytes that were verified, read once,
never a path re-read later."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from edgeae.errors import BundleError
from edgeae.runtime.fingerprint import fingerprint as compute_fingerprint
from edgeae.runtime.fingerprint import graph_digest, graph_metadata, tables_digest
from edgeae.runtime.manifest import MANIFEST_NAME, ROLES, Manifest, read_manifest_json
from edgeae.runtime.payload import fingerprint_prefix

PRECISIONS = ("fp32", "int8")
FINGERPRINT_KEY = "edgeae.fingerprint"  # the exporter writes the fingerprint into each graph's metadata
REEXPORT = "restore the bundle folder from its export or re-export it with `edgeae export`"


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest
    missing: frozenset[str] = frozenset()  # listed files absent from a partial bundle
    # role -> verified digest of its fp32 graph; "ROLE.int8" -> of its int8 graph
    digests: dict[str, str] = field(default_factory=dict)
    bound_by: str = "graphs"  # "graphs": fingerprint recomputed; "metadata": partial bundle without digests

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, partial: bool = False) -> Bundle:
        """Validate the manifest, check every listed file's size and sha256 and recompute the fingerprint.
        `path`: a bundle folder, its manifest.json, or the name of a pretrained bundle shipped with edgeae
        (`edgeae models --pretrained`).

        Every listed file must exist, unless `partial`: a device may ship only the encoder side and a decode
        server only the decoder side (export/README.md); then `graph_path` refuses the missing graphs. The
        fingerprint needs both fp32 graphs' digests: an absent graph's digest comes from the manifest
        (`graphs.<role>.digest`); a partial bundle of an older export without them is checked against the
        fingerprint in its present graphs' metadata instead (`bound_by = "metadata"`, weaker).
        """
        from edgeae import zoo

        # A pretrained name (MODEL:QUALITY, e.g. "photo:3") that is not an existing path: the shipped bundle.
        root = zoo.resolve(str(path)) if zoo.is_name(path) else Path(path)
        if root.name == MANIFEST_NAME and root.is_file():
            root = root.parent
        if not root.is_dir():
            raise BundleError(f"bundle folder {str(root)!r} does not exist; export one with `edgeae export RUN`")
        raw = read_manifest_json(root)
        manifest = Manifest.from_dict(raw, source=str(root / MANIFEST_NAME))
        real_root = root.resolve()
        graph_files = {g.file: role for role, g in manifest.graphs.items()}
        int8_files = {g.int8_file: role for role, g in manifest.graphs.items() if g.int8_file}
        missing, digests, metadata = set(), {}, {}
        for name, entry in manifest.files.items():
            file = _inside(root, real_root, name)
            if not file.is_file():
                if partial:
                    missing.add(name)
                    continue
                raise BundleError(f"{root}: {name} is listed in {MANIFEST_NAME} but missing; copy the whole "
                                  "bundle folder or re-export it with `edgeae export`")
            if name in graph_files or name in int8_files:
                data = _read_verified(root, file, name, entry.bytes, entry.sha256)
                metadata[name] = graph_metadata(data)
                key = graph_files[name] if name in graph_files else f"{int8_files[name]}.int8"
                digests[key] = graph_digest(data)
            elif file.stat().st_size != entry.bytes or sha256_file(file) != entry.sha256:
                raise _tampered(root, name)
        bound_by = _check_fingerprint(root, manifest, raw, digests, metadata)
        return cls(root, manifest, frozenset(missing), digests, bound_by)

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint

    @property
    def fingerprint_prefix(self) -> bytes:
        """The 8 bytes every payload made with this bundle carries."""
        return fingerprint_prefix(self.manifest.fingerprint)

    @property
    def precisions(self) -> list[str]:
        """What the bundle runs end to end: fp32, plus int8 when both its encoder and decoder have int8 twins."""
        g = self.manifest.graphs
        return ["fp32", "int8"] if all(g[r].int8_file for r in ("encoder", "decoder")) else ["fp32"]

    def _graph_name(self, role: str, precision: str) -> str:
        if role not in self.manifest.graphs:
            raise ValueError(f"role must be one of {tuple(self.manifest.graphs)}, got {role!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        graph = self.manifest.graphs[role]
        name = graph.file if precision == "fp32" else graph.int8_file
        if name is None:
            raise BundleError(f"bundle {self.path} has no int8 {role} graph; re-export with `edgeae export --int8` "
                              "or use fp32")
        if name in self.missing:
            raise BundleError(f"bundle {self.path} does not include {name} (needed for the {precision} {role}); "
                              "copy it from the exported bundle")
        return name

    def graph_path(self, role: str, precision: str = "fp32") -> Path:
        """The file of the encoder or decoder graph, fp32 or int8 (verified at open; tools that hand a path
        on, like Triton's repository writer, use this; sessions use `graph_bytes`)."""
        return self.path / self._graph_name(role, precision)

    def graph_bytes(self, role: str, precision: str = "fp32") -> bytes:
        """The graph's bytes, read now and checked against the manifest (size, sha256, and the digest verified
        at open): build sessions from these, so a file swapped after `open` is refused instead of run."""
        name = self._graph_name(role, precision)
        entry = self.manifest.files[name]
        data = _read_verified(self.path, self.path / name, name, entry.bytes, entry.sha256)
        key = role if precision == "fp32" else f"{role}.int8"
        if key in self.digests and graph_digest(data) != self.digests[key]:
            raise _tampered(self.path, name)
        return data


def _read_verified(root: Path, file: Path, name: str, size: int, sha256: str) -> bytes:
    try:
        with open(file, "rb") as f:
            if os.fstat(f.fileno()).st_size != size:  # before any read sized from the manifest
                raise _tampered(root, name)
            data = f.read(size + 1)
    except OSError as exc:
        raise BundleError(f"{root}: cannot read {name}: {exc.strerror or exc}; {REEXPORT}") from None
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
        raise _tampered(root, name)
    return data


def _tampered(root: Path, name: str) -> BundleError:
    return BundleError(f"{root}: {name} does not match its sha256 in {MANIFEST_NAME} (changed after export?); "
                       f"{REEXPORT}")


def _check_fingerprint(root: Path, m: Manifest, raw: dict, digests: dict[str, str],
                       metadata: dict[str, dict[str, str]]) -> str:
    """Refuse a bundle whose graphs or tables do not give its fingerprint; returns how it was bound."""
    parts: dict[str, str | None] = {}
    int8_parts: dict[str, str] = {}
    for role, graph in m.graphs.items():
        recorded, found = graph.digest, digests.get(role)
        if recorded is not None and found is not None and recorded != found:
            raise BundleError(f"{root}: {graph.file} is not the {role} graph this bundle was exported "
                              f"with (its digest differs from graphs.{role}.digest); {REEXPORT}")
        parts[role] = found or recorded
        if graph.int8_digest is not None:  # exports since the int8 graphs joined the fingerprint
            found = digests.get(f"{role}.int8")
            if found is not None and found != graph.int8_digest:
                raise BundleError(f"{root}: {graph.int8_file} is not the int8 {role} graph this bundle was exported "
                                  f"with (its digest differs from graphs.{role}.int8_digest); {REEXPORT}")
            int8_parts[role] = graph.int8_digest
    # Every graph's metadata must name this bundle (older exports' int8 graphs are bound by this alone).
    for name, meta in metadata.items():
        if FINGERPRINT_KEY in meta and meta[FINGERPRINT_KEY] != m.fingerprint:
            raise BundleError(f"{root}: {name} was exported for bundle {meta[FINGERPRINT_KEY][:16]}, not this "
                              f"one ({m.fingerprint[:16]}); {REEXPORT}")
    if None in parts.values():  # a partial bundle from an export that did not record graph digests
        if not metadata:
            raise BundleError(f"{root}: no graph present to check the fingerprint against; {REEXPORT}")
        return "metadata"
    known = {role: d for role, d in parts.items() if d is not None}
    extra = {role: d for role, d in known.items() if role not in ROLES}
    want = compute_fingerprint(known["encoder"], known["decoder"], tables_digest(raw["latent"], raw["entropy"]),
                               *(d for _, d in sorted(extra.items())), *(d for _, d in sorted(int8_parts.items())))
    if want != m.fingerprint:
        raise BundleError(f"{root}: the graphs and latent/entropy tables give fingerprint {want[:16]}, but the "
                          f"manifest says {m.fingerprint[:16]} (a graph or table was replaced or edited); {REEXPORT}")
    return "graphs"


def _inside(root: Path, real_root: Path, name: str) -> Path:
    """`root / name`, refusing absolute names, '..', and links that lead outside the bundle folder."""
    parts = PurePosixPath(name.replace("\\", "/"))
    if parts.is_absolute() or ".." in parts.parts or ":" in name or not parts.parts:
        raise BundleError(f"{root}: {MANIFEST_NAME} lists the file {name!r}, which is not a plain relative "
                          "name inside the bundle; refusing it (re-export the bundle)")
    file = root / parts
    if file.exists() and not file.resolve().is_relative_to(real_root):
        raise BundleError(f"{root}: {name} is a link to outside the bundle folder; refusing it "
                          "(copy the real file into the bundle)")
    return file


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (the `files` section of a manifest)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
