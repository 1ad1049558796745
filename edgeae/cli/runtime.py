"""CLI: `edgeae encode` (images -> .eae payloads) and `edgeae decode` (payloads -> PNG), torch-free.
The pipelines live in edgeae.runtime.files; this module parses options and prints."""

from __future__ import annotations

from pathlib import Path

import click

from edgeae.cli import main


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


def _codec_options(f):
    f = click.option("--tile-pixels", type=click.IntRange(0), help="At most this many image pixels per graph run, "
                     "on overlapping tiles where the bundle's graphs are local (manifest halo; the output is the "
                     "same); 0: always whole [default: 524288].")(f)
    f = click.option("--threads", type=click.IntRange(1, 1024), help="onnxruntime threads [default: the "
                     "device profile's, else all cores].")(f)
    f = click.option("--device", help="Device profile (name or TOML path) for the onnxruntime session.")(f)
    f = click.option("--int8", "int8", is_flag=True, help="Use the bundle's int8 graph.")(f)
    f = click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")(f)
    return click.option("--bundle", required=True, type=click.Path(), help="Bundle folder from `edgeae export`.")(f)


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@_codec_options
@click.option("--batch", is_flag=True, help="Write every image into one payload (batch.eae).")
@click.option("--spool", type=click.Path(file_okay=False), help="Also write each payload durably to this spool "
              "folder (for --send / `edgeae upload`).")
@click.option("--send", help="After encoding, upload the spool to this server (http://host:port); payloads "
              "leave the spool only once acknowledged. Needs --spool.")
@click.option("--convert", is_flag=True, help="Convert image files of the other kind (RGB <-> gray) instead of "
              "refusing them.")
@click.option("--quality", type=click.IntRange(1, 255), help="Operating point of a multi-quality bundle [default: "
              "the zoo name's (photo:3), else the bundle's default]; `edgeae inspect BUNDLE` lists them.")
def encode(inputs: tuple[str, ...], bundle: str, out: str, int8: bool, device: str | None, threads: int | None,
           tile_pixels: int | None, batch: bool, spool: str | None, send: str | None, convert: bool, quality: int | None) -> None:
    """Encode images (files, or folders of them, walked recursively) into .eae payloads: one per image, or
    one with --batch."""
    from edgeae.runtime.codec import Encoder
    from edgeae.runtime.files import encode_files

    if send and not spool:
        raise click.UsageError("--send needs --spool DIR (payloads are spooled durably before upload)")
    spooled = None  # edgeae.serve.uploader.Spool with --spool
    if spool:
        from edgeae.serve.uploader import Spool, ingest_url

        if send:
            ingest_url(send)  # refuse a bad URL before encoding anything
        spooled = Spool(spool)
    enc = Encoder(bundle, "int8" if int8 else "fp32", device=device, threads=threads, convert=convert,
                  quality=quality, tile_pixels=tile_pixels)
    failures = Failures()
    sink = spooled.put if spooled is not None else None  # not `if spooled`: an empty Spool is falsy (len 0)
    r = encode_files(enc, inputs, out, batch=batch, sink=sink, skip=failures.report,
                     on_write=None if batch else lambda w: click.echo(
                         f"{w.source} -> {w.target}  {w.nbytes} bytes  {w.bpp:.3f} bpp"))
    if batch and r.written:
        for i, source in enumerate(r.batch_sources):
            click.echo(f"item {i}: {source}")
        click.echo(f"{r.images} images -> {r.written[0].target}  {r.total_bytes} bytes")
    if r.images:
        click.echo(f"{r.images} images: {r.total_bytes / r.images:.1f} bytes/image, {r.bpp:.3f} bits per pixel")
    if send:
        from edgeae.serve.uploader import upload_spool

        assert spooled is not None  # --send without --spool was refused above
        u = upload_spool(spooled, send, log=lambda line: click.echo(line, err=True))
        click.echo(f"sent {u.sent} payload(s) to {send} ({u.new} new), rejected {len(u.rejected)}, "
                   f"still spooled {u.remaining}")
        if u.remaining:
            raise click.ClickException(f"{u.remaining} payload(s) still in {spool} ({u.last_error}); "
                                       f"run `edgeae upload --spool {spool} --send {send}`")
    failures.finish()


@main.command()
@click.argument("payloads", nargs=-1, required=True, type=click.Path())
@_codec_options
@click.option("--verify", is_flag=True, help="Check the entropy model's integer graph (hyperprior: the "
              "hyper-decoder's table indices) against its numpy int64 reference on every payload; stop with an "
              "error if they differ on this machine.")
def decode(payloads: tuple[str, ...], bundle: str, out: str, int8: bool, device: str | None,
           threads: int | None, tile_pixels: int | None, verify: bool) -> None:
    """Decode .eae payloads (files, or folders of them, walked recursively) into PNG images."""
    from edgeae.runtime.codec import Decoder
    from edgeae.runtime.files import decode_files

    dec = Decoder(bundle, "int8" if int8 else "fp32", device=device, threads=threads, verify=verify,
                  tile_pixels=tile_pixels)
    failures = Failures()
    r = decode_files(dec, payloads, out, skip=failures.report, on_write=lambda w: click.echo(
        f"{w.source} -> {w.target}" + (f" .. {w.last.name}" if w.last else "")))
    click.echo(f"{r.images} images decoded into {out}")
    failures.finish()
