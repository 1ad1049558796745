"""Convolutional autoencoder: the seed-003 model and a configurable variant.

Decoders upsample with nearest-neighbour Resize followed by Conv rather than ConvTranspose: Resize+Conv
exports to plain ONNX ops that onnxruntime quantises with well-supported QLinearConv kernels, and it avoids
the checkerboard artefacts of transposed convolutions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgeae.train.models.base import AutoEncoder, ModelConfig
from edgeae.train.models.registry import register


@dataclass
class ConvConfig(ModelConfig):
    channels: tuple[int, ...] = (16, 8)  # seed 003: Conv 16 -> pool -> Conv 8 -> pool
    latent_channels: int | None = None  # None: the last of `channels` (seed); else a 1x1 conv to this many
    downsample: str = "pool"  # "pool" (seed) or "stride" (strided convolutions)
    kernel: int = 3


def _sizes(h: int, w: int, steps: int) -> list[tuple[int, int]]:
    out = [(h, w)]
    for _ in range(steps):
        h, w = (h + 1) // 2, (w + 1) // 2  # 'same' padding, like Keras MaxPooling2D(padding='same')
        out.append((h, w))
    return out


@register("conv", ConvConfig)
class ConvAE(AutoEncoder):
    """image -> [Conv/ReLU -> pool]*k -> latent (C', H/2^k, W/2^k) -> [Conv/ReLU -> Resize x2]*k -> Conv -> Sigmoid"""

    def __init__(self, config: ConvConfig) -> None:
        super().__init__()
        if config.downsample not in ("pool", "stride"):
            raise ValueError(f"downsample must be 'pool' or 'stride', got {config.downsample!r}")
        self.config = config
        c_in, h, w = config.in_shape
        k, pad = config.kernel, config.kernel // 2
        sizes = _sizes(h, w, len(config.channels))
        enc: list[nn.Module] = []
        prev = c_in
        for ch in config.channels:
            if config.downsample == "pool":
                enc += [nn.Conv2d(prev, ch, k, padding=pad), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
            else:
                enc += [nn.Conv2d(prev, ch, k, stride=2, padding=pad), nn.ReLU()]
            prev = ch
        if config.latent_channels:
            enc += [nn.Conv2d(prev, config.latent_channels, 1)]
            prev = config.latent_channels
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = []
        for ch, size, smaller in zip(reversed(config.channels), reversed(sizes[:-1]), reversed(sizes[1:]),
                                     strict=True):
            # Explicit output sizes make odd inputs (7 -> 4 -> 7) come back to the right shape; exact doublings
            # upsample by a factor instead, so the exported graph takes any size (the same pixels at this one).
            exact = size == (2 * smaller[0], 2 * smaller[1])
            up = nn.Upsample(scale_factor=2, mode="nearest") if exact else nn.Upsample(size=size, mode="nearest")
            dec += [nn.Conv2d(prev, ch, k, padding=pad), nn.ReLU(), up]
            prev = ch
        dec += [nn.Conv2d(prev, c_in, k, padding=pad), nn.Sigmoid()]
        self.decoder = nn.Sequential(*dec)

    def forward_shapes(self) -> tuple[torch.Size, torch.Size]:
        x = torch.zeros(1, *self.config.in_shape)
        z = self.encoder(x)
        return z.shape, self.decoder(z).shape
