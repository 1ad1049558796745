"""The `edgeae` command line: a click group; each submodule adds one group of thin commands."""

from __future__ import annotations

import importlib

import click

from edgeae import __version__
from edgeae.errors import EdgeaeError

# Top-level import name -> the extra of pyproject.toml that installs it. The base install (`pip install edgeae`)
# is the torch-free runtime; a command that needs more says which extra, in one line, instead of a traceback.
# tests/test_base_install.py checks this table against pyproject.toml.
EXTRA_OF_MODULE = {
    "torch": "train", "onnx": "train", "onnxscript": "train", "safetensors": "train", "sklearn": "train",
    "skimage": "train", "rich": "train", "matplotlib": "train",
    "fastapi": "server", "uvicorn": "server", "httpx": "server",
    "ray": "ray",
}
PACKAGE_OF_MODULE = {"sklearn": "scikit-learn", "skimage": "scikit-image"}  # where pip's name differs


def missing_extra(exc: ImportError) -> str | None:
    """The one-line message for an ImportError of an optional dependency, or None for anything else (a broken
    import inside edgeae itself must stay a real error, with its traceback)."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    top = exc.name.partition(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None:
        return None
    return (f"this command needs {PACKAGE_OF_MODULE.get(top, top)}, which is not installed; "
            f"install it with pip install 'edgeae[{extra}]'")


class EdgeaeGroup(click.Group):
    """Turns every deliberate edgeae error, and a missing optional dependency, into a one-line message and a
    non-zero exit, no traceback."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except EdgeaeError as exc:
            raise click.ClickException(str(exc)) from None
        except ImportError as exc:
            message = missing_extra(exc)
            if message is None:
                raise
            raise click.ClickException(message) from None


@click.group(cls=EdgeaeGroup)
@click.version_option(__version__, prog_name="edgeae")
def main() -> None:
    """edgeae: train autoencoders, export them as ONNX codec bundles, run them on the edge."""


# Each module registers its commands on `main`; none imports torch at import time.
for _name in ("train", "bundle", "runtime", "profile", "serve", "evaluate", "demo", "doctor"):
    importlib.import_module(f"edgeae.cli.{_name}")
