"""The model contract: a dataclass config + an nn.Module with `.encoder` and `.decoder`, named outputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelConfig:
    """Fields every family shares. `in_shape` is (C, H, W) taken from the dataset."""

    in_shape: tuple[int, int, int] = (1, 28, 28)
    loss: str = "bce"  # reconstruction loss: "bce" or "mse"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AEOutput:
    x_hat: torch.Tensor
    latent: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class LossOutput:
    total: torch.Tensor
    terms: dict[str, float] = field(default_factory=dict)


def reconstruction_loss(kind: str, x_hat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if kind == "bce":
        return F.binary_cross_entropy(x_hat.clamp(1e-6, 1 - 1e-6), target)
    if kind == "mse":
        return F.mse_loss(x_hat, target)
    raise ValueError(f"unknown reconstruction loss {kind!r}; use 'bce' or 'mse'")


def full_precision(t: torch.Tensor) -> torch.autocast:
    """Autocast off on `t`'s device: what must stay float32 when training runs in bfloat16 (`--precision
    bf16`): entropy models, rates and losses. Inputs made inside it should be `.float()` first."""
    return torch.autocast(t.device.type, enabled=False)


class AutoEncoder(nn.Module):
    """Base of every family.

    x (N,C,H,W) in [0,1] --encoder--> latent (N, *latent_shape) --decoder--> x_hat (N,C,H,W) in [0,1]

    `encoder` outputs the *deployment* latent (what `edgeae export` puts in encoder.onnx).
    """

    config: ModelConfig
    encoder: nn.Module
    decoder: nn.Module

    def forward(self, x: torch.Tensor) -> AEOutput:
        z = self.encoder(x)
        return AEOutput(x_hat=self.decoder(z), latent=z)

    def loss(self, out: AEOutput, target: torch.Tensor) -> LossOutput:
        rec = reconstruction_loss(self.config.loss, out.x_hat, target)
        return LossOutput(total=rec, terms={"recon": float(rec.detach())})

    @property
    def latent_shape(self) -> tuple[int, ...]:
        with torch.no_grad():
            z = self.encoder(torch.zeros(1, *self.config.in_shape))
        return tuple(z.shape[1:])

    def summary(self) -> dict[str, Any]:
        """Numbers worth printing after training (families add their own)."""
        return {"params": sum(p.numel() for p in self.parameters())}
