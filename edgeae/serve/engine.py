"""The decode engine the servers share: per-request parse + entropy decode, then one decoder graph run per
latent shape over the items of several requests, split back per request. Torch-free (runtime only)."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgeae.errors import BundleError
from edgeae.runtime.codec import Decoder


class DecodeEngine:
    """Wraps a runtime Decoder. `prepare` (payload -> per-item latents and sizes: parse + entropy decoding)
    raises the payload's PayloadError; `run` renders several prepared requests with one decoder graph run per
    latent shape (`Decoder.render`). Both are thread-safe (onnxruntime sessions are).

    `hook`: an optional callable run before each graph run (tests use it to slow decoding down)."""

    def __init__(self, bundle: str | os.PathLike[str], precision: str = "fp32", threads: int | None = None,
                 hook: Callable[[int], None] | None = None, allow_unbound: bool = False) -> None:
        self.decoder = Decoder(bundle, precision, threads=threads)
        b = self.decoder.bundle
        if b.bound_by != "graphs" and not allow_unbound:
            raise BundleError(f"{b.path}: its fingerprint cannot be recomputed (graphs are missing and the "
                              "manifest records no digests for them, an older export): a swapped graph would go "
                              "unnoticed; re-export the bundle, or serve it anyway with --allow-unbound")
        self.manifest = self.decoder.manifest
        self.precision = precision
        self.hook = hook

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint

    @property
    def fingerprint_prefix(self) -> bytes:
        return self.decoder.fingerprint

    def output_values(self, header: Any) -> int:
        """Output values (items x C x H x W) a parsed payload header decodes to, known before decoding: the
        sizes a v2 header carries, else the bundle's fixed size."""
        shape = self.manifest.input.shape
        pixels = getattr(header, "pixels", 0)  # sum of H x W over the items (v2; 0 in v1)
        if pixels:
            return shape[0] * pixels
        return header.items * math.prod(shape)

    def prepare(self, payload: bytes) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
        """Strict parse (fingerprint included) and entropy decoding: per-item latents and original sizes."""
        return self.decoder.items(payload)

    def run(self, prepared: Sequence[tuple[list[np.ndarray], list[tuple[int, int]]]]) -> list[Any]:
        """Several requests' items -> per request its uint8 images: an (N, H, W[, C]) array, or a list of
        per-item arrays when its items differ in size."""
        if not prepared:
            return []
        if self.hook is not None:
            self.hook(len(prepared))
        latents = [y for ys, _ in prepared for y in ys]
        sizes = [hw for _, hws in prepared for hw in hws]
        images = self.decoder.render(latents, sizes)
        out, start = [], 0
        for ys, _ in prepared:
            mine = images[start : start + len(ys)]
            start += len(ys)
            out.append(np.stack(mine) if len({im.shape for im in mine}) == 1 else mine)
        return out

    def decode(self, payload: bytes) -> Any:
        return self.run([self.prepare(payload)])[0]

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "name": m.name,
            "fingerprint": m.fingerprint,
            "fingerprint_prefix": self.decoder.fingerprint.hex(),
            "precision": self.precision,
            "input": m.input.to_dict(),
            "latent_shape": list(m.latent.shape),
            "bits": m.latent.quantization.bits,
            "coder": m.entropy.coder,
            "model": {"family": m.model.get("family")} if isinstance(m.model, dict) else {},
        }


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def strip(images: np.ndarray) -> np.ndarray:
    """(N, H, W[, C]) -> one (N*H, W[, C]) image: the items stacked top to bottom."""
    return images.reshape((images.shape[0] * images.shape[1],) + images.shape[2:])
