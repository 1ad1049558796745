"""Dense autoencoder: the seed's 784 -> 128 -> 784 (ReLU code, sigmoid output), with optional hidden layers."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from edgeae.train.models.base import AutoEncoder, ModelConfig
from edgeae.train.models.registry import register


@dataclass
class DenseConfig(ModelConfig):
    latent: int = 128
    hidden: tuple[int, ...] = ()  # e.g. (128,) with latent=64 gives the seed's deeper 784-128-64-128-784


def mlp(sizes: list[int], last: nn.Module) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        layers.append(last if i == len(sizes) - 2 else nn.ReLU())
    return nn.Sequential(*layers)


@register("dense", DenseConfig)
class DenseAE(AutoEncoder):
    """image -> Flatten -> Linear/ReLU ... -> code (ReLU) -> Linear/ReLU ... -> Sigmoid -> Unflatten -> image"""

    def __init__(self, config: DenseConfig) -> None:
        super().__init__()
        self.config = config
        n = math.prod(config.in_shape)
        sizes = [n, *config.hidden, config.latent]
        self.encoder = nn.Sequential(nn.Flatten(), mlp(sizes, nn.ReLU()))
        self.decoder = nn.Sequential(mlp(sizes[::-1], nn.Sigmoid()), nn.Unflatten(1, tuple(config.in_shape)))
