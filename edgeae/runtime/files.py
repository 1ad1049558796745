"""Files in, files out (torch-free): the one folder walker, and the encode / decode pipelines over files that
`edgeae encode` / `edgeae decode` (and any device script) run.

    found = find_files(["photos/", "one.png"], IMAGE_SUFFIXES)    # sorted, folders walked recursively
    result = encode_files(Encoder(bundle), ["photos/", "one.png"], "out/")   # out/<sub-folders>/<name>.eae
    result = decode_files(Decoder(bundle), ["out/"], "decoded/")            # decoded/<sub-folders>/<name>.png

A file that cannot be used (unreadable, wrong size, a corrupt payload) is reported through `skip(path, reason)`
and left out; the others go on. Output files are written atomically (edgeae.fsutil).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeae.errors import InputError, PayloadError
from edgeae.fsutil import write_atomic

ENCODE_CHUNK = 64  # images per encoder graph run
BATCH_NAME = "batch.eae"
PAYLOAD_SUFFIXES = frozenset({".eae"})

Skip = Callable[[Path, str], None]


@dataclass(frozen=True)
class FoundFile:
    """A file to process, and its name relative to what was given (sub-folders kept, suffix dropped)."""

    source: Path
    name: Path

    def output(self, out: str | os.PathLike[str], suffix: str, index: int | None = None) -> Path:
        stem = self.name.name if index is None else f"{self.name.name}-{index:04d}"
        return Path(out) / self.name.parent / (stem + suffix)


def _raise(path: Path, reason: str) -> None:
    raise InputError(f"{path}: {reason}")


def find_files(paths: Iterable[str | os.PathLike[str]], suffixes: Iterable[str],
               skip: Skip | None = None) -> list[FoundFile]:
    """Files as given (any suffix), folders walked recursively for `suffixes` (case-insensitive), each folder's
    files sorted by path; hidden files and folders (a leading dot, e.g. atomic-write temporaries) are left out.
    A missing path or a folder without such files goes to `skip` (default: InputError)."""
    skip = skip or _raise
    wanted = frozenset(s.lower() for s in suffixes)
    found: list[FoundFile] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in wanted
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not files:
                skip(p, f"no {'/'.join(sorted(wanted))} files in this folder")
            found += [FoundFile(f, f.relative_to(p).with_suffix("")) for f in files]
        elif p.is_file():
            found.append(FoundFile(p, Path(p.stem)))
        else:
            skip(p, "no such file or folder")
    return found


def _unique_names(found: Sequence[FoundFile]) -> None:
    seen: dict[Path, Path] = {}
    for f in found:
        if f.name in seen:
            raise InputError(f"{seen[f.name]} and {f.source} would both write {f.name}; "
                             "process them into different output folders")
        seen[f.name] = f.source


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@dataclass
class Written:
    source: Path
    target: Path  # the file written (decode: the first of a payload's images)
    nbytes: int  # payload bytes (encode), PNG bytes of all its images (decode)
    items: int = 1  # images in the payload (encode), or images decoded from it (decode)
    last: Path | None = None  # decode, a payload of several images: the last one's file
    pixels: int = 0  # encode: H * W of all its images

    @property
    def bpp(self) -> float:
        """Bits per pixel of an encoded payload, header included."""
        return 8.0 * self.nbytes / self.pixels if self.pixels else float("nan")


@dataclass
class FilesResult:
    """What a pipeline wrote: one entry per output file; `pixels`: H * W summed over the images encoded."""

    written: list[Written] = field(default_factory=list)
    skipped: int = 0
    images: int = 0
    pixels: int = 0
    batch_sources: list[Path] = field(default_factory=list)  # --batch: the source of each item, in order

    @property
    def total_bytes(self) -> int:
        return sum(w.nbytes for w in self.written)

    @property
    def bpp(self) -> float:
        """Bits per pixel over everything encoded, headers included."""
        return 8.0 * self.total_bytes / self.pixels if self.pixels else float("nan")


def encode_files(encoder: Any, paths: Iterable[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                 batch: bool = False, sink: Callable[[bytes], Any] | None = None, skip: Skip | None = None,
                 on_write: Callable[[Written], None] | None = None, chunk: int = ENCODE_CHUNK) -> FilesResult:
    """Encode image files (and folders of them, see `find_files`) with an `edgeae.runtime.Encoder`: one
    payload per image under `out` (sub-folders kept), or every image in one `out/batch.eae` with `batch`.
    The encoder graph runs on chunks of `chunk` images. `sink(payload)` also receives every finished payload
    (e.g. an upload spool's `put`). Unusable files go to `skip(path, reason)` (default: InputError)."""
    from edgeae.runtime.images import IMAGE_SUFFIXES

    skip = skip or _raise
    found = find_files(paths, IMAGE_SUFFIXES, skip)
    _unique_names(found)
    result = FilesResult()

    def deliver(target: Path, payload: bytes, source: Path, images: Sequence[Any]) -> None:
        write_atomic(target, payload)
        if sink is not None:
            sink(payload)
        w = Written(source, target, len(payload), len(images), pixels=sum(_pixels(i) for i in images))
        result.written.append(w)
        if on_write:
            on_write(w)

    held: list[tuple[FoundFile, Any]] = []
    for part in _chunks(found, chunk):
        loaded = []
        for f in part:
            try:
                loaded.append((f, encoder.images.load(f.source)))
            except InputError as exc:
                result.skipped += 1
                skip(f.source, str(exc))
        if not loaded:
            continue
        result.images += len(loaded)
        result.pixels += sum(_pixels(img) for _, img in loaded)
        if batch:
            held += loaded
            if len(held) > encoder.packer.max_items:
                raise InputError(f"more than {encoder.packer.max_items} images for one payload; encode them "
                                 "one payload per image, or in several folders")
            continue
        for (f, img), payload in zip(loaded, encoder.encode_each([img for _, img in loaded]), strict=True):
            deliver(f.output(out, ".eae"), payload, f.source, [img])
    if batch and held:
        images = [img for _, img in held]
        deliver(Path(out) / BATCH_NAME, encoder.encode(images), Path(out), images)
        result.batch_sources = [f.source for f, _ in held]
    return result


def _pixels(image: Any) -> int:
    """H * W of a loaded uint8 image (H, W) or (H, W, C)."""
    return int(image.shape[0] * image.shape[1])


def read_payload(path: str | os.PathLike[str]) -> bytes:
    """A payload file's bytes, reading at most one byte more than the largest valid payload (so a huge file
    is refused by the parser instead of loaded whole)."""
    from edgeae.runtime.payload import MAX_PAYLOAD_BYTES

    with open(path, "rb") as fh:
        return fh.read(MAX_PAYLOAD_BYTES + 1)


def decode_files(decoder: Any, paths: Iterable[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                 skip: Skip | None = None, on_write: Callable[[Written], None] | None = None) -> FilesResult:
    """Decode payload files (and folders of .eae files) with an `edgeae.runtime.Decoder` into PNG files under
    `out`: `<name>.png`, or `<name>-0000.png`, ... for a payload of several images. Each read is bounded by
    the largest valid payload."""
    from edgeae.runtime.images import png_bytes

    skip = skip or _raise
    found = find_files(paths, PAYLOAD_SUFFIXES, skip)
    _unique_names(found)
    result = FilesResult()
    for f in found:
        try:
            images = decoder.decode(read_payload(f.source))
        except OSError as exc:
            result.skipped += 1
            skip(f.source, exc.strerror or str(exc))
            continue
        except PayloadError as exc:
            result.skipped += 1
            skip(f.source, f"{exc.code}: {exc}")
            continue
        single, targets, nbytes = len(images) == 1, [], 0
        for i, image in enumerate(images):
            png = png_bytes(image)
            targets.append(write_atomic(f.output(out, ".png", None if single else i), png))
            nbytes += len(png)
        w = Written(f.source, targets[0], nbytes, len(images), None if single else targets[-1])
        result.written.append(w)
        result.images += len(images)
        if on_write:
            on_write(w)
    return result
