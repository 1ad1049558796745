"""CLI: `edgeae encode` (images -> .eae payloads) and `edgeae decode` (payloads -> PNG), torch-free."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from edgeae.cli import main
from edgeae.fsutil import write_atomic

ENCODE_CHUNK = 64  # images per graph run
BATCH_NAME = "batch.eae"


@dataclass
class Job:
    source: Path
    target: Path  # output path relative to --out, without its suffix

    def output(self, out: Path, suffix: str, index: int | None = None) -> Path:
        name = self.target.name if index is None else f"{self.target.name}-{index:04d}"
        return out / self.target.parent / (name + suffix)


class Failures:
    """Per-file problems are reported as they happen and skipped; the command fails at the end if any."""

    def __init__(self) -> None:
        self.count = 0

    def report(self, source: Path | str, problem: str) -> None:
        self.count += 1
        click.echo(f"skipped {source}: {problem}", err=True)

    def finish(self) -> None:
        if self.count:
            raise click.ClickException(f"{self.count} input(s) could not be processed (see above)")


def _jobs(paths: Iterable[str], suffixes: frozenset[str], failures: Failures) -> list[Job]:
    """Files as given, folders walked (sorted, recursively) for `suffixes`; output names keep the sub-folders."""
    jobs: list[Job] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes)
            if not found:
                failures.report(p, f"no {'/'.join(sorted(suffixes))} files in this folder")
            jobs += [Job(f, f.relative_to(p).with_name(f.stem)) for f in found]
        elif p.is_file():
            jobs.append(Job(p, Path(p.stem)))
        else:
            failures.report(p, "no such file or folder")
    seen: dict[Path, Path] = {}
    for job in jobs:
        if job.target in seen:
            raise click.UsageError(f"{seen[job.target]} and {job.source} would both write {job.target}; "
                                   "encode them into different --out folders")
        seen[job.target] = job.source
    return jobs


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _codec_options(f):
    f = click.option("--threads", type=click.IntRange(1, 1024), help="onnxruntime threads [default: the "
                     "device profile's, else all cores].")(f)
    f = click.option("--device", help="Device profile (name or TOML path) for the onnxruntime session.")(f)
    f = click.option("--int8", "int8", is_flag=True, help="Use the bundle's int8 graph.")(f)
    f = click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")(f)
    return click.option("--bundle", required=True, type=click.Path(), help="Bundle folder from `edgeae export`.")(f)


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@_codec_options
@click.option("--batch", is_flag=True, help=f"Write every image into one payload ({BATCH_NAME}).")
@click.option("--spool", type=click.Path(file_okay=False), help="Also write each payload durably to this spool "
              "folder (for --send / `edgeae upload`).")
@click.option("--send", help="After encoding, upload the spool to this server (http://host:port); payloads "
              "leave the spool only once acknowledged. Needs --spool.")
@click.option("--convert", is_flag=True, help="Convert image files of the other kind (RGB <-> gray) instead of "
              "refusing them.")
def encode(inputs: tuple[str, ...], bundle: str, out: str, int8: bool, device: str | None, threads: int | None,
           batch: bool, spool: str | None, send: str | None, convert: bool) -> None:
    """Encode images (files, or folders of them) into .eae payloads: one per image, or one with --batch."""
    if send and not spool:
        raise click.UsageError("--send needs --spool DIR (payloads are spooled durably before upload)")
    spooled = None  # edgeae.serve.uploader.Spool with --spool
    if spool:
        from edgeae.serve.uploader import Spool, ingest_url

        if send:
            ingest_url(send)  # refuse a bad URL before encoding anything
        spooled = Spool(spool)

    from edgeae.runtime.codec import Encoder
    from edgeae.runtime.images import IMAGE_SUFFIXES

    failures = Failures()
    jobs = _jobs(inputs, IMAGE_SUFFIXES, failures)
    enc = Encoder(bundle, "int8" if int8 else "fp32", device=device, threads=threads, convert=convert)
    out_dir = Path(out)
    encoded = list(_encode_files(enc, jobs, failures))
    if batch and encoded:
        if len(encoded) > enc.packer.max_items:
            raise click.UsageError(f"{len(encoded)} images exceed one payload's {enc.packer.max_items}; drop --batch")
        payload = enc.pack([item for _, item in encoded])
        _deliver(out_dir / BATCH_NAME, payload, spooled)
        for i, (job, _) in enumerate(encoded):
            click.echo(f"item {i}: {job.source}")
        click.echo(f"{len(encoded)} images -> {out_dir / BATCH_NAME}  {len(payload)} bytes")
        total = len(payload)
    else:
        total = 0
        for job, item in encoded:
            payload = enc.pack([item])
            target = job.output(out_dir, ".eae")
            _deliver(target, payload, spooled)
            total += len(payload)
            click.echo(f"{job.source} -> {target}  {len(payload)} bytes  {8 * len(payload) / item.pixels:.3f} bpp")
    if encoded:
        mean = total / len(encoded)
        pixels = sum(item.pixels for _, item in encoded)
        click.echo(f"{len(encoded)} images: {mean:.1f} bytes/image, {8 * total / pixels:.3f} bits per pixel")
    if send:
        from edgeae.serve.uploader import upload_spool

        assert spooled is not None  # --send without --spool was refused above
        r = upload_spool(spooled, send, log=lambda line: click.echo(line, err=True))
        click.echo(f"sent {r.sent} payload(s) to {send} ({r.new} new), rejected {len(r.rejected)}, "
                   f"still spooled {r.remaining}")
        if r.remaining:
            raise click.ClickException(f"{r.remaining} payload(s) still in {spool} ({r.last_error}); "
                                       f"run `edgeae upload --spool {spool} --send {send}`")
    failures.finish()


def _encode_files(enc, jobs: list[Job], failures: Failures) -> Iterator[tuple[Job, Any]]:
    """(job, coded item) for every readable image; the graph runs on chunks of ENCODE_CHUNK images (grouped
    by size on any-size bundles)."""
    import numpy as np

    from edgeae.errors import InputError

    for chunk in _chunks(jobs, ENCODE_CHUNK):
        loaded = []
        for job in chunk:
            try:
                loaded.append((job, enc.images.load(job.source)))
            except InputError as exc:
                failures.report(job.source, str(exc))
        if loaded:
            items = enc.items([img for _, img in loaded] if enc.any_size else np.stack([img for _, img in loaded]))
            yield from zip((job for job, _ in loaded), items, strict=True)


def _deliver(target: Path, payload: bytes, spool: Any = None) -> None:
    """Where a finished payload goes: a file under --out and, with --spool, the upload spool."""
    write_atomic(target, payload)
    if spool is not None:
        spool.put(payload)


@main.command()
@click.argument("payloads", nargs=-1, required=True, type=click.Path())
@_codec_options
def decode(payloads: tuple[str, ...], bundle: str, out: str, int8: bool, device: str | None,
           threads: int | None) -> None:
    """Decode .eae payloads (files, or folders of them) into PNG images."""
    from edgeae.errors import PayloadError
    from edgeae.runtime.codec import Decoder
    from edgeae.runtime.images import png_bytes
    from edgeae.runtime.payload import MAX_PAYLOAD_BYTES

    failures = Failures()
    jobs = _jobs(payloads, frozenset({".eae"}), failures)
    dec = Decoder(bundle, "int8" if int8 else "fp32", device=device, threads=threads)
    out_dir = Path(out)
    images = 0
    for job in jobs:
        try:
            with open(job.source, "rb") as f:
                data = f.read(MAX_PAYLOAD_BYTES + 1)
            decoded = dec.decode(data)
        except OSError as exc:
            failures.report(job.source, exc.strerror or str(exc))
            continue
        except PayloadError as exc:
            failures.report(job.source, f"{exc.code}: {exc}")
            continue
        targets = [job.output(out_dir, ".png", None if len(decoded) == 1 else i) for i in range(len(decoded))]
        for target, image in zip(targets, decoded, strict=True):
            write_atomic(target, png_bytes(image))
        images += len(decoded)
        click.echo(f"{job.source} -> {targets[0]}" + (f" .. {targets[-1].name}" if len(targets) > 1 else ""))
    click.echo(f"{images} images decoded into {out_dir}")
    failures.finish()
