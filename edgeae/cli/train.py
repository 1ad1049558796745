"""CLI: `edgeae train` and `edgeae models`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, overload

import click

from edgeae.cli import main


def _parse_set(values: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE (e.g. --set beta=0.5)", param_hint="--set")
        try:
            out[key.replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = raw
    return out


@overload
def _ints(text: str) -> list[int]: ...
@overload
def _ints(text: None) -> None: ...
@overload
def _ints(text: str | None) -> list[int] | None: ...
def _ints(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers") from None


@main.command()
@click.option("--model", "family", default="conv", show_default=True, help="Model family (see `edgeae models`).")
@click.option("--dataset", default="digits", show_default=True, help="digits, photos, mnist, images or npy.")
@click.option("--data", type=click.Path(), help="Path for mnist/images/npy datasets.")
@click.option("--latent", type=int, help="Latent size (dense/vae/sparse) or latent channels (conv/codec).")
@click.option("--hidden", help="Hidden layer sizes, e.g. 128 or 256,128 (dense/vae/sparse).")
@click.option("--channels", help="Conv widths per stage, e.g. 16,8 (conv) or the codec's width.")
@click.option("--loss", type=click.Choice(["bce", "mse"]), help="Reconstruction loss (default per family).")
@click.option("--lmbda", type=float, help="Rate-distortion trade-off (codec).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any other model option, e.g. beta=0.5.")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--lr-decay", type=click.Choice(["none", "cosine"]), default="none", show_default=True,
              help="Learning-rate schedule over the planned steps (cosine: down to 1% of --lr).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--denoise", type=float, default=0.0, show_default=True, help="Input noise std (denoising AE).")
@click.option("--patience", type=int, help="Stop after this many epochs without validation improvement.")
@click.option("--patch", type=int, default=32, show_default=True, help="Patch size (photos/images).")
@click.option("--color", type=click.Choice(["gray", "rgb"]), default="gray", show_default=True)
@click.option("--limit", type=int, help="Use only the first N images of the dataset.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Run directory to write.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def train(family: str, dataset: str, data: str | None, latent: int | None, hidden: str | None, channels: str | None,
          loss: str | None, lmbda: float | None, sets: tuple[str, ...], epochs: int, batch_size: int, lr: float,
          lr_decay: str, seed: int, denoise: float, patience: int | None, patch: int, color: str,
          limit: int | None, out: str, force: bool) -> None:
    """Train a model on a dataset and write a run directory (config, safetensors weights, metrics, grid)."""
    from edgeae.train.data import DataSpec
    from edgeae.train.trainer import TrainConfig
    from edgeae.train.trainer import train as run_training

    options = {**_model_options(family, latent, _ints(hidden), _ints(channels), loss, lmbda), **_parse_set(sets)}
    spec = DataSpec(name=dataset, data=str(Path(data).resolve()) if data else None, seed=seed, patch=patch,
                    color=color, limit=limit)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, lr_decay=lr_decay, seed=seed,
                      denoise_std=denoise, patience=patience)
    try:
        result = run_training(family, spec, out, options, cfg, overwrite=force)
    except (KeyError, ValueError, TypeError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from None
    final = result.metrics["final"]
    click.echo(f"run: {result.path}")
    click.echo(f"validation: loss {final['loss']:.4f}  MSE {final['mse']:.5f}  PSNR {final['psnr']:.2f} dB"
               + (f"  near-zero latent {final['near_zero']:.1%}" if "near_zero" in final else ""))
    click.echo(f"reconstructions: {result.path / 'reconstructions.png'}")


def _model_options(family: str, latent, hidden, channels, loss, lmbda) -> dict[str, Any]:
    opts: dict[str, Any] = {"loss": loss, "hidden": hidden, "lmbda": lmbda}
    if latent is not None:
        opts["latent_channels" if family in ("conv", "codec") else "latent"] = latent
    if channels is not None:
        opts["channels"] = channels if family != "codec" else channels[0]
    return {k: v for k, v in opts.items() if v is not None}


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(as_json: bool) -> None:
    """List the model families with their default options."""
    from edgeae.train.models import families

    table = {name: cfg_cls().to_dict() for name, (cfg_cls, _) in sorted(families().items())}
    if as_json:
        click.echo(json.dumps(table, indent=2))
        return
    for name, defaults in table.items():
        doc = (families()[name][1].__doc__ or "").strip().splitlines()[0]
        click.echo(f"{name:8s} {doc}")
        click.echo("         " + ", ".join(f"{k}={v}" for k, v in defaults.items() if k != "in_shape"))
