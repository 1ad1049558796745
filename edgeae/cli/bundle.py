"""CLI: `edgeae export` (a run, or your own model -> bundle) and `edgeae inspect` (bundle or payload)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
        if role not in ("encoder", "decoder") or which not in ("first", "last", "none"):
            raise click.BadParameter(f"{item!r}: use encoder:first, encoder:last, decoder:first or decoder:last "
                                     "(ROLE:none: quantise every node)", param_hint="--int8-keep-fp32")
        keep[role] = (*keep.get(role, ()), *(() if which == "none" else (which,)))
    return keep


def _numbers(text: str | None, option: str, kind: type = float) -> tuple | None:
    if text is None:
        return None
    try:
        return tuple(kind(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers", param_hint=option) from None


FOREIGN_OPTIONS = ("weights", "input_shape", "input_kind", "value_range", "mean", "std", "dynamic_size",
                   "size_multiple", "encoder_attr", "decoder_attr", "latent_output", "validation_data", "atol",
                   "rtol", "name")


@main.command()
@click.argument("run_dir", type=click.Path(), required=False)
@click.option("--model", "model_spec", metavar="FILE.py:FACTORY|pkg.module:FACTORY",
              help="Export your own model: a function returning the nn.Module (instead of RUN_DIR).")
@click.option("--weights", type=click.Path(dir_okay=False), help="--model weights: .safetensors, or a state_dict "
              ".pt read with torch.load(weights_only=True).")
@click.option("--input-shape", help="--model input without batch: C,H,W (images) or C,L / D (tensors).")
@click.option("--input-kind", type=click.Choice(["image", "tensor"]), help="[default: image for C,H,W, else tensor]")
@click.option("--range", "value_range", help="Images: what pixels 0..255 map to, e.g. -1,1 [default: 0,1].")
@click.option("--mean", help="Per-channel mean of the normalisation (images: after /255), e.g. 0.485,0.456,0.406.")
@click.option("--std", help="Per-channel std of the normalisation.")
@click.option("--dynamic-size", is_flag=True, help="The model is fully convolutional: the bundle takes any H, W.")
@click.option("--size-multiple", type=click.IntRange(1, 4096), help="Any-size padding multiple [default: the "
              "latent stride].")
@click.option("--encoder-attr", help="Submodule or method of the model that encodes [default: encoder / encode].")
@click.option("--decoder-attr", help="Submodule or method of the model that decodes [default: decoder / decode].")
@click.option("--latent-output", help="Index or key of the latent when the encoder returns several (a VAE: 0).")
@click.option("--out", type=click.Path(file_okay=False), help="Bundle folder [default: export/<name>/].")
@click.option("--name", help="Bundle name [default: the run name, or the --out folder's name].")
@click.option("--opset", type=int, default=17, show_default=True)
@click.option("--int8", "int8", is_flag=True, help="Also write int8 (QDQ) graphs, calibrated on training data.")
@click.option("--int8-roles", type=click.Choice(["encoder", "decoder"]), multiple=True,
              help="Only these graphs get an int8 twin (repeatable; implies --int8), e.g. an int8 encoder with "
              "an fp32 decoder.")
@click.option("--calibration-samples", type=int, default=256, show_default=True)
@click.option("--calibration-data", type=click.Path(), help="Folder of images or .npy: (N, C, H, W) / (N, H, W[, C]) "
              "uint8 or float [0, 1] images; raw float tensors (N, ...).")
@click.option("--validation-data", type=click.Path(), help="--model: like --calibration-data [default: its last "
              "fifth].")
@click.option("--latent-bits", type=click.IntRange(1, 16), default=8, show_default=True)
@click.option("--atol", type=float, help="--model: fp32 parity, absolute [default: 1e-4].")
@click.option("--rtol", type=float, help="--model: fp32 parity, relative [default: 1e-3].")
@click.option("--device", help="Device profile (name or TOML path) whose int8 preset to use.")
@click.option("--max-int8-drop-db", type=float, default=0.5, show_default=True)
@click.option("--int8-keep-fp32", "keep_fp32", multiple=True, metavar="ROLE:first|last|none",
              help="Leave a graph's first or last Conv/Gemm/MatMul in fp32, e.g. encoder:last (repeatable); "
                   "replaces the model's default for that role (a hyperprior: encoder:last; ROLE:none: none).")
@click.option("--input-size", help="RUN_DIR of a fully convolutional family: export at H,W (e.g. 512,768).")
@click.option("--no-speed", is_flag=True, help="Skip the fp32-vs-int8 latency measurement.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def export(run_dir: str | None, model_spec: str | None, out: str | None, opset: int, int8: bool,
           int8_roles: tuple[str, ...], calibration_samples: int, calibration_data: str | None, latent_bits: int, device: str | None,
           max_int8_drop_db: float, keep_fp32: tuple[str, ...], input_size: str | None, no_speed: bool,
           force: bool, **foreign: object) -> None:
    """Export a trained run (RUN_DIR) or your own PyTorch model (--model) as a verified bundle:
    encoder.onnx, decoder.onnx (+ int8), manifest.json. docs/EXPORT.md has the details."""
    if (run_dir is None) == (model_spec is None):
        raise click.UsageError("give a RUN_DIR (from `edgeae train`) or --model FILE.py:FACTORY, not both")
    common: dict[str, Any] = dict(opset=opset, int8=int8_roles or int8, calibration_samples=calibration_samples,
                                  latent_bits=latent_bits, device=device, max_int8_drop_db=max_int8_drop_db,
                                  force=force, measure_speed=not no_speed, int8_keep_fp32=_keep(keep_fp32))
    if run_dir is not None:
        given = [f"--{k.replace('_', '-')}" for k in FOREIGN_OPTIONS if foreign.get(k) not in (None, False)]
        if given:
            raise click.UsageError(f"{', '.join(given)} go with --model; a run directory knows its model")
        from edgeae.bundling.build import ExportOptions, export_run

        opts = ExportOptions(out=Path(out) if out else None, input_size=_size(input_size),
                             calibration_data=Path(calibration_data) if calibration_data else None,
                             **{**common, "int8": bool(int8 or int8_roles)}, int8_roles=int8_roles or None)
        result = export_run(run_dir, opts)
    else:
        if input_size is not None:
            raise click.UsageError("--input-size is for RUN_DIR; with --model give --input-shape")
        assert model_spec is not None
        result = _export_foreign(model_spec, out, calibration_data, common, foreign)
    click.echo(str(result))


def _export_foreign(model_spec: str, out: str | None, calibration_data: str | None, common: dict[str, Any],
                    f: dict[str, Any]) -> Any:
    if not f.get("input_shape"):
        raise click.UsageError("--model needs --input-shape (C,H,W for images, C,L or D for tensors)")
    if not calibration_data:
        raise click.UsageError("--model needs --calibration-data (a folder of images or an .npy file)")
    shape = _numbers(f["input_shape"], "--input-shape", int)
    assert shape is not None
    kind = f.get("input_kind") or ("image" if len(shape) == 3 else "tensor")
    value_range = _numbers(f.get("value_range"), "--range")
    if value_range is not None and len(value_range) != 2:
        raise click.BadParameter("give LOW,HIGH", param_hint="--range")
    latent_output = f.get("latent_output")
    if isinstance(latent_output, str) and latent_output.lstrip("-").isdigit():
        latent_output = int(latent_output)

    import edgeae
    from edgeae.bundling.foreign import build_model, file_digest

    try:
        spec = edgeae.InputSpec(shape=shape, kind=kind, range=value_range,
                                mean=_numbers(f.get("mean"), "--mean"),
                                std=_numbers(f.get("std"), "--std"),
                                dynamic_size=bool(f.get("dynamic_size")),
                                size_multiple=f.get("size_multiple"))
        spec.normalisation()
    except ValueError as exc:
        raise click.UsageError(f"input: {exc}") from None
    model = build_model(model_spec, f.get("weights"))
    weights = f.get("weights")
    source = {"model": model_spec, **({"weights": str(weights), "weights_sha256": file_digest(Path(str(weights)))}
                                      if weights else {})}
    name = f.get("name") or (Path(out).name if out else model_spec.rpartition(":")[2])
    tol = {k: f[k] for k in ("atol", "rtol") if f.get(k) is not None}
    return edgeae.export(model=model, encode=f.get("encoder_attr"), decode=f.get("decoder_attr"),
                         latent_output=latent_output, out=Path(out) if out else Path("export") / str(name),
                         input=spec, calibration=calibration_data, validation=f.get("validation_data"),
                         name=str(name), source=source, **tol, **common)


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
