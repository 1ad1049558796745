"""CLI: `edgeae demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeae.cli import main


@main.command()
@click.option("--out", type=click.Path(file_okay=False), default="demo-out", show_default=True,
              help="Where the run, payloads, images and report go.")
@click.option("--bundle", type=click.Path(file_okay=False), default="export/demo-digits-conv", show_default=True)
@click.option("--epochs", type=click.IntRange(1), help="Training epochs of the conv autoencoder [default: 60].")
@click.option("--quick", is_flag=True, help="Every stage at the smallest sizes, in seconds: a smoke run whose "
              "figures mean nothing.")
def demo(out: str, bundle: str, epochs: int | None, quick: bool) -> None:
    """Train, export, encode/decode, profile and evaluate on the embedded digits (about a minute)."""
    from edgeae.demo import DemoConfig, run_demo

    kw: dict[str, Any] = {"out": Path(out), "bundle": Path(bundle), "echo": click.echo, **({"epochs": epochs} if epochs else {})}
    run_demo(DemoConfig.quick(**kw) if quick else DemoConfig(**kw))
