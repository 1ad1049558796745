"""CLI: `edgeae export` (run -> bundle) and `edgeae inspect` (bundle or payload)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgeae.cli import main


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not H,W (e.g. 512,768)", param_hint="--input-size") from None
    return h, w


def _keep(items: tuple[str, ...]) -> dict[str, tuple[str, ...]] | None:
    if not items:
        return None
    keep: dict[str, tuple[str, ...]] = {}
    for item in items:
        role, _, which = item.partition(":")
        if role not in ("encoder", "decoder") or which not in ("first", "last"):
            raise click.BadParameter(f"{item!r}: use encoder:first, encoder:last, decoder:first or decoder:last",
                                     param_hint="--int8-keep-fp32")
        keep[role] = (*keep.get(role, ()), which)
    return keep


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--out", type=click.Path(file_okay=False), help="Bundle folder [default: export/<run name>/].")
@click.option("--opset", type=int, default=17, show_default=True)
@click.option("--int8", "int8", is_flag=True, help="Also write int8 (QDQ) graphs, calibrated on training data.")
@click.option("--calibration-samples", type=int, default=256, show_default=True)
@click.option("--calibration-data", type=click.Path(dir_okay=False), help=".npy (N, C, H, W) floats in [0, 1].")
@click.option("--latent-bits", type=click.IntRange(1, 16), default=8, show_default=True)
@click.option("--device", help="Device profile (name or TOML path) whose int8 preset to use.")
@click.option("--max-int8-drop-db", type=float, default=0.5, show_default=True)
@click.option("--int8-keep-fp32", "keep_fp32", multiple=True, metavar="ROLE:first|last",
              help="Leave a graph's first or last Conv/Gemm/MatMul in fp32, e.g. encoder:last (repeatable).")
@click.option("--input-size", help="H,W for fully convolutional models (e.g. 512,768).")
@click.option("--no-speed", is_flag=True, help="Skip the fp32-vs-int8 latency measurement.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def export(run_dir: str, out: str | None, opset: int, int8: bool, calibration_samples: int,
           calibration_data: str | None, latent_bits: int, device: str | None, max_int8_drop_db: float,
           keep_fp32: tuple[str, ...], input_size: str | None, no_speed: bool, force: bool) -> None:
    """Export a trained run as a verified bundle: encoder.onnx, decoder.onnx (+ int8), manifest.json."""
    from edgeae.bundling.build import ExportOptions, export_run
    from edgeae.runtime.summary import summarize

    opts = ExportOptions(out=Path(out) if out else None, opset=opset, int8=int8,
                         calibration_samples=calibration_samples, latent_bits=latent_bits, device=device,
                         max_int8_drop_db=max_int8_drop_db, input_size=_size(input_size),
                         calibration_data=Path(calibration_data) if calibration_data else None,
                         force=force, measure_speed=not no_speed, int8_keep_fp32=_keep(keep_fp32))
    result = export_run(run_dir, opts)
    click.echo(f"bundle: {result.path}")
    click.echo(summarize(result.manifest))


@main.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(path: str, as_json: bool) -> None:
    """Describe a bundle (folder or manifest.json) or a payload (.eae file; no bundle needed)."""
    p = Path(path)
    if p.is_dir() or p.name == "manifest.json":
        from edgeae.runtime.summary import load_summary_manifest, summarize

        manifest = load_summary_manifest(p)
        click.echo(json.dumps(manifest, indent=2) if as_json else summarize(manifest))
        return
    from edgeae.runtime.files import read_payload
    from edgeae.runtime.payload import describe

    try:
        info = describe(read_payload(p))
    except OSError as exc:
        raise click.ClickException(f"cannot read {p}: {exc.strerror or exc}") from None
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            click.echo(f"{key:>14}: {value}")
