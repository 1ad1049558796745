"""edgeae: autoencoders as deployable learned codecs for edge devices.

    import edgeae
    result = edgeae.export(model=my_ae, out="export/my-ae", calibration=images,
                           input=edgeae.InputSpec(channels=1, height=28, width=28))   # docs/EXPORT.md

`import edgeae` stays light (no torch): `export` and `InputSpec` load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["InputSpec", "__version__", "export"]

if TYPE_CHECKING:
    from edgeae.bundling.core import export
    from edgeae.bundling.inputs import InputSpec


def __getattr__(name: str) -> Any:
    if name == "export":
        from edgeae.bundling.core import export

        return export
    if name == "InputSpec":
        from edgeae.bundling.inputs import InputSpec

        return InputSpec
    raise AttributeError(f"module 'edgeae' has no attribute {name!r}")
