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


RESUMABLE = {"resume", "epochs", "max_steps", "device", "threads", "precision", "no_progress", "data", "val_data",
             "val_every"}


@main.command()
@click.option("--model", "family", default="conv", show_default=True, help="Model family (see `edgeae models`).")
@click.option("--dataset", default="digits", show_default=True, help="digits, photos, mnist, images or npy.")
@click.option("--data", type=click.Path(), help="Path for mnist/images/npy datasets.")
@click.option("--val-data", type=click.Path(), help="Validate on this path (same dataset kind) instead of a split "
              "of --data; it is never trained on.")
@click.option("--crop", type=int, help="images: train on whole images, drawing new random CROPxCROP crops (and "
              "flips) every epoch instead of a fixed patch cut.")
@click.option("--crops-per-image", type=int, default=1, show_default=True, help="With --crop: crops per image per "
              "epoch.")
@click.option("--val-crop", type=int, help="With --crop: side of the centre crop of each validation image "
              "(default: --crop, the model's input shape, which export validates on).")
@click.option("--latent", type=int, help="Latent size (dense/vae/sparse) or latent channels (conv/codec).")
@click.option("--hidden", help="Hidden layer sizes, e.g. 128 or 256,128 (dense/vae/sparse).")
@click.option("--channels", help="Conv widths per stage, e.g. 16,8 (conv) or the codec's width.")
@click.option("--loss", type=click.Choice(["bce", "mse"]), help="Reconstruction loss (default per family).")
@click.option("--lmbda", type=float, help="Rate-distortion trade-off (codec).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any other model option, e.g. beta=0.5.")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--max-steps", type=int, help="Stop after this many optimiser steps.")
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
@click.option("--out", type=click.Path(file_okay=False), help="Run directory to write.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--init", "init", type=click.Path(file_okay=False), metavar="RUN",
              help="Start from the weights of another run (same family, or a variable-rate family from its base "
              "family's run) instead of a random initialisation; a fresh optimiser and schedule.")
@click.option("--resume", type=click.Path(file_okay=False), metavar="RUN",
              help="Continue RUN from its checkpoint (only --epochs, --max-steps, --device, --threads, --precision, --val-every, and --data / "
              "--val-data for the same data in another place, may change).")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True,
              help="Where to train (auto: cuda when available).")
@click.option("--threads", type=int, help="torch CPU threads [default: OMP_NUM_THREADS, else the free cores "
              "(cores minus the load average), 1..4].")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="bf16: the forward pass under bfloat16 autocast, entropy models and losses in float32 (about 3x "
              "faster on AMX CPUs; measure with benchmarks/bench_train_precision.py).")
@click.option("--checkpoint-every", type=int, default=0, show_default=True,
              help="Also checkpoint every N steps (0: only by time and at every epoch end).")
@click.option("--checkpoint-minutes", type=float, default=10.0, show_default=True,
              help="Checkpoint at least this often (0: off).")
@click.option("--val-every", type=int, default=1, show_default=True,
              help="Validate every N epochs (and when training ends); the others log the training loss only.")
@click.option("--no-progress", is_flag=True, help="No progress bar / progress lines.")
@click.pass_context
def train(ctx: click.Context, family: str, dataset: str, data: str | None, val_data: str | None, crop: int | None,
          crops_per_image: int, val_crop: int | None, latent: int | None, hidden: str | None,
          channels: str | None, loss: str | None, lmbda: float | None, sets: tuple[str, ...], epochs: int,
          max_steps: int | None, batch_size: int, lr: float, lr_decay: str, seed: int, denoise: float,
          patience: int | None, patch: int, color: str, limit: int | None, out: str | None, force: bool,
          init: str | None, resume: str | None, device: str, threads: int | None, precision: str, checkpoint_every: int,
          checkpoint_minutes: float, val_every: int, no_progress: bool) -> None:
    """Train a model on a dataset and write a run directory (config, checkpoint, safetensors weights, metrics,
    grid). Interrupt it (Ctrl-C, SIGTERM) and continue later with --resume RUN."""
    from edgeae.train.data import DataSpec
    from edgeae.train.trainer import TrainConfig
    from edgeae.train.trainer import resume as resume_training
    from edgeae.train.trainer import train as run_training

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE

    try:
        if resume:
            fixed = sorted(p.name for p in ctx.command.params if p.name not in RESUMABLE and given(str(p.name)))
            if fixed:
                raise click.UsageError(f"--resume continues a run with its own options; drop "
                                       f"{', '.join('--' + f.replace('_', '-') for f in fixed)}")
            result = resume_training(resume, epochs=epochs if given("epochs") else None, max_steps=max_steps,
                                     device=device if given("device") else None, threads=threads,
                                     precision=precision if given("precision") else None,
                                     progress=False if no_progress else None, data=data, val_data=val_data,
                                     val_every=val_every if given("val_every") else None)
        else:
            if out is None:
                raise click.UsageError("give --out RUN (a new run directory) or --resume RUN")
            options = {**_model_options(family, latent, _ints(hidden), _ints(channels), loss, lmbda),
                       **_parse_set(sets)}
            spec = DataSpec(name=dataset, data=_abs(data), seed=seed, patch=patch, color=color, limit=limit,
                            val_data=_abs(val_data), crop=crop, crops_per_image=crops_per_image, val_crop=val_crop)
            cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, lr_decay=lr_decay, seed=seed,
                              denoise_std=denoise, patience=patience, max_steps=max_steps, device=device,
                              threads=threads, precision=precision, checkpoint_every=checkpoint_every,
                              checkpoint_minutes=checkpoint_minutes, val_every=val_every,
                              progress=not no_progress)
            result = run_training(family, spec, out, options, cfg, overwrite=force, init=init)
    except (KeyError, ValueError, TypeError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from None
    final = result.metrics["final"]
    click.echo(f"run: {result.path}  ({result.metrics['steps']} steps, {result.metrics['seconds']:.0f} s, "
               f"{result.metrics['threads']} threads)")
    click.echo(f"validation: loss {final['loss']:.4f}  MSE {final['mse']:.5f}  PSNR {final['psnr']:.2f} dB"
               + (f"  {final['bpp']:.3f} bpp" if "bpp" in final else "")
               + (f"  near-zero latent {final['near_zero']:.1%}" if "near_zero" in final else ""))
    click.echo(f"reconstructions: {result.path / 'reconstructions.png'}")


def _abs(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path else None


def _model_options(family: str, latent, hidden, channels, loss, lmbda) -> dict[str, Any]:
    """The shorthand options, mapped onto the family's own option names (codec-like families have one width
    and `latent_channels`)."""
    from dataclasses import fields

    from edgeae.train.models import families

    known = {f.name: f for f in fields(families()[family][0])} if family in families() else {}
    opts: dict[str, Any] = {"loss": loss, "hidden": hidden, "lmbda": lmbda}
    if latent is not None:
        opts["latent_channels" if "latent_channels" in known else "latent"] = latent
    if channels is not None:
        one_width = "channels" in known and known["channels"].type in (int, "int")
        opts["channels"] = channels[0] if one_width else channels
    return {k: v for k, v in opts.items() if v is not None}


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--pretrained", is_flag=True, help="List the trained bundles shipped with edgeae (no torch needed): "
              "use one with --bundle MODEL:QUALITY or Encoder(\"MODEL:QUALITY\").")
def models(as_json: bool, pretrained: bool) -> None:
    """List the model families with their default options, or (--pretrained) the shipped bundles."""
    if pretrained:
        _pretrained(as_json)
        return
    from edgeae.train.models import families

    table = {name: cfg_cls().to_dict() for name, (cfg_cls, _) in sorted(families().items())}
    if as_json:
        click.echo(json.dumps(table, indent=2))
        return
    for name, defaults in table.items():
        doc = (families()[name][1].__doc__ or "").strip().splitlines()[0]
        click.echo(f"{name:8s} {doc}")
        click.echo("         " + ", ".join(f"{k}={v}" for k, v in defaults.items() if k != "in_shape"))


def _pretrained(as_json: bool) -> None:
    from edgeae import zoo

    rows = zoo.pretrained()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no pretrained bundles in this install")
        return

    def fmt(v: Any, spec: str) -> str:
        return format(v, spec) if isinstance(v, (int, float)) else "-"

    click.echo(f"{'name':10s} {'family':11s} {'lambda':>7s} {'bpp':>6s} {'PSNR dB':>8s} {'MS-SSIM':>8s} "
               f"{'int8 dB':>8s}  measured on")
    for r in rows:
        click.echo(f"{r['name']:10s} {str(r.get('family') or '-'):11s} {fmt(r.get('lmbda'), '7.4f')} "
                   f"{fmt(r.get('bpp'), '6.3f')} {fmt(r.get('psnr'), '8.2f')} {fmt(r.get('ms_ssim'), '8.4f')} "
                   f"{fmt(r.get('psnr_int8'), '8.2f')}  {r.get('measured_on', '-')}")
    click.echo("use: edgeae encode IMAGE --bundle NAME   (model cards: docs/MODELS.md)")
