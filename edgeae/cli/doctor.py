"""CLI: `edgeae doctor`, a check of this install (platform, versions, entropy coder, a self-test), torch-free."""

from __future__ import annotations

import click

from edgeae.cli import main


@main.command()
@click.option("--bundle", type=click.Path(), help="Self-test with this bundle folder instead of the built-in one.")
@click.option("--no-self-test", is_flag=True, help="Only print the platform and versions.")
def doctor(bundle: str | None, no_self_test: bool) -> None:
    """Check this install: platform, onnxruntime providers, active entropy coder, and a self-test
    encode/decode (exits non-zero with one line if the install cannot work)."""
    from edgeae.runtime.doctor import run_doctor

    run_doctor(bundle, run_self_test=not no_self_test, echo=click.echo)
