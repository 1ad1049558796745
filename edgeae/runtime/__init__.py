"""The edge/server runtime: numpy + onnxruntime (+ Pillow for files, + constriction where it has a wheel, as a
faster entropy coder that writes the same bytes as the numpy one). Never imports torch.

    from edgeae.runtime import Encoder, Decoder
    payload = Encoder("export/mnist-conv").encode(images)     # bytes
    images = Decoder("export/mnist-conv").decode(payload)     # uint8 (N, H, W)

Names are imported on first use, so `import edgeae.runtime` (and `edgeae inspect` on a payload) stays
cheap: onnxruntime (and constriction, if installed) load only when a codec is built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeae.runtime.bundle import Bundle
    from edgeae.runtime.codec import Decoder, Encoder
    from edgeae.runtime.manifest import Manifest, load_manifest

__all__ = ["Bundle", "Decoder", "Encoder", "Manifest", "load_manifest"]

_WHERE = {"Bundle": "bundle", "Decoder": "codec", "Encoder": "codec", "Manifest": "manifest",
          "load_manifest": "manifest"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"edgeae.runtime.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'edgeae.runtime' has no attribute {name!r}")
