"""Latent <-> integer symbols with the manifest's per-channel offset and step (docs/MANIFEST.md)."""

from __future__ import annotations

import numpy as np

from edgeae.runtime.manifest import LatentSpec


class Quantizer:
    """q = clip(round((y - offset[c]) / step[c]), 0, levels - 1); y_hat = offset[c] + q * step[c].

    Works on batched latents (N, *latent.shape) with channels on `latent.channel_axis` (dense latents
    (N, L) have it on axis 1 too). The broadcast tables are built once.
    """

    def __init__(self, latent: LatentSpec) -> None:
        self.latent = latent
        q = latent.quantization
        shape = [1] * (len(latent.shape) + 1)
        shape[latent.channel_axis] = -1
        self.offset = np.asarray(q.offset, np.float32).reshape(shape)
        self.step = np.asarray(q.step, np.float32).reshape(shape)
        self.top = np.float32(q.levels - 1)

    def quantize(self, y: np.ndarray) -> np.ndarray:
        """float latents -> int32 symbols in 0 .. levels-1 (NaN -> 0)."""
        t = np.subtract(y, self.offset, dtype=np.float32)
        np.divide(t, self.step, out=t)
        np.rint(t, out=t)
        # fmax/fmin rather than clip: they map NaN to the bound instead of passing it on as garbage.
        np.fmax(t, 0, out=t)
        np.fmin(t, self.top, out=t)
        return t.astype(np.int32)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """int symbols -> float32 latents (what the decoder graph sees)."""
        y = q.astype(np.float32)
        y *= self.step
        y += self.offset
        return y
