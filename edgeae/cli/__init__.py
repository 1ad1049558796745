"""The `edgeae` command line: a click group; each submodule adds one group of thin commands."""

from __future__ import annotations

import importlib

import click

from edgeae import __version__
from edgeae.errors import EdgeaeError


class EdgeaeGroup(click.Group):
    """Turns every deliberate edgeae error into a one-line message and a non-zero exit, no traceback."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except EdgeaeError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=EdgeaeGroup)
@click.version_option(__version__, prog_name="edgeae")
def main() -> None:
    """edgeae: train autoencoders, export them as ONNX codec bundles, run them on the edge."""


# Each module registers its commands on `main`; none imports torch at import time.
for _name in ("train", "bundle", "runtime", "profile", "serve", "evaluate", "demo", "doctor"):
    importlib.import_module(f"edgeae.cli.{_name}")
