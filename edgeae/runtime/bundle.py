"""A bundle folder on disk: its validated manifest, with every file checked against the manifest's sha256."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edgeae.errors import BundleError
from edgeae.runtime.manifest import MANIFEST_NAME, Manifest, load_manifest
from edgeae.runtime.payload import fingerprint_prefix

PRECISIONS = ("fp32", "int8")


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest
    missing: frozenset[str] = frozenset()  # listed files absent from a partial bundle

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, partial: bool = False) -> Bundle:
        """Validate the manifest and check every listed file's size and sha256. `path`: a bundle folder, its
        manifest.json, or the name of a pretrained bundle shipped with edgeae (`edgeae models --pretrained`).

        Every listed file must exist, unless `partial`: a device may ship only the encoder side and a decode
        server only the decoder side (export/README.md); then `graph_path` refuses the missing graphs.
        """
        from edgeae import zoo

        # A pretrained name (MODEL:QUALITY, e.g. "photo:3") that is not an existing path: the shipped bundle.
        root = zoo.resolve(str(path)) if zoo.is_name(path) else Path(path)
        if root.name == MANIFEST_NAME and root.is_file():
            root = root.parent
        if not root.is_dir():
            raise BundleError(f"bundle folder {str(root)!r} does not exist; export one with `edgeae export RUN`")
        manifest = load_manifest(root)
        real_root = root.resolve()
        missing = set()
        for name, entry in manifest.files.items():
            file = _inside(root, real_root, name)
            if not file.is_file():
                if partial:
                    missing.add(name)
                    continue
                raise BundleError(f"{root}: {name} is listed in {MANIFEST_NAME} but missing; copy the whole "
                                  "bundle folder or re-export it with `edgeae export`")
            if file.stat().st_size != entry.bytes or sha256_file(file) != entry.sha256:
                raise BundleError(f"{root}: {name} does not match its sha256 in {MANIFEST_NAME} (changed after "
                                  "export?); restore the file or re-export the bundle")
        return cls(root, manifest, frozenset(missing))

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint

    @property
    def fingerprint_prefix(self) -> bytes:
        """The 8 bytes every payload made with this bundle carries."""
        return fingerprint_prefix(self.manifest.fingerprint)

    def graph_path(self, role: str, precision: str = "fp32") -> Path:
        """The verified file of one of the bundle's graphs (encoder, decoder or an extra role), fp32 or int8."""
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
        return self.path / name


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
