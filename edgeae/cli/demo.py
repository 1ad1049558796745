"""CLI: `edgeae demo`."""

from __future__ import annotations

from pathlib import Path

import click

from edgeae.cli import main


@main.command()
@click.option("--out", type=click.Path(file_okay=False), default="demo-out", show_default=True,
              help="Where the run, payloads and report go.")
@click.option("--bundle", type=click.Path(file_okay=False), default="export/demo-digits-conv", show_default=True)
@click.option("--epochs", type=int, default=60, show_default=True)
def demo(out: str, bundle: str, epochs: int) -> None:
    """Train, export, encode/decode, profile and evaluate on the embedded digits (about a minute)."""
    from edgeae.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=Path(out), bundle=Path(bundle), epochs=epochs, echo=click.echo))
