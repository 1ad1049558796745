"""The decode engine the servers share: per-request parse + entropy decode, then ONE decoder graph run over the
concatenated latents of several requests, split back per request. Torch-free (runtime only)."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgeae.runtime.codec import Decoder


class DecodeEngine:
    """Wraps a runtime Decoder. `prepare` (payload -> int symbols) raises the payload's PayloadError;
    `run` decodes several prepared requests in one graph run. Both are thread-safe (onnxruntime sessions are).

    `hook`: an optional callable run before each graph run (tests use it to slow decoding down)."""

    def __init__(self, bundle: str | os.PathLike[str], precision: str = "fp32", threads: int | None = None,
                 hook: Callable[[int], None] | None = None) -> None:
        self.decoder = Decoder(bundle, precision, threads=threads)
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
        """Output values (items x C x H x W) a parsed payload header decodes to, known before decoding."""
        c, h, w = self.manifest.input.shape
        sizes = getattr(header, "sizes", None)  # per-item (H, W) of any-size payloads
        if sizes:
            return c * sum(int(a) * int(b) for a, b in sizes)
        return header.items * c * h * w

    def prepare(self, payload: bytes) -> np.ndarray:
        """Strict parse (fingerprint included) and entropy decoding: int32 symbols (N, *latent_shape)."""
        return self.decoder.symbols(payload)

    def run(self, prepared: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Symbols of several requests -> their uint8 images, from one decoder graph run."""
        if not prepared:
            return []
        if self.hook is not None:
            self.hook(len(prepared))
        sizes = [len(q) for q in prepared]
        images = self.decoder.from_symbols(np.concatenate(prepared) if len(prepared) > 1 else prepared[0])
        out, start = [], 0
        for n in sizes:
            out.append(images[start : start + n])
            start += n
        return out

    def decode(self, payload: bytes) -> np.ndarray:
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
