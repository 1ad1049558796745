"""Variational autoencoder (seed 004): Gaussian posterior, reparameterised sampling, loss = recon + beta * KL."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from edgeae.train.models.base import AEOutput, AutoEncoder, LossOutput, ModelConfig, reconstruction_loss
from edgeae.train.models.dense import mlp
from edgeae.train.models.registry import register


@dataclass
class VAEConfig(ModelConfig):
    latent: int = 16
    hidden: tuple[int, ...] = (256,)
    beta: float = 1.0


class GaussianEncoder(nn.Module):
    """Shared trunk with two heads. `forward` returns the mean only: that is the deployment latent,
    so the exported encoder graph has no sampling in it."""

    def __init__(self, n_in: int, hidden: tuple[int, ...], latent: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Flatten(), mlp([n_in, *hidden], nn.ReLU())) if hidden else nn.Flatten()
        width = hidden[-1] if hidden else n_in
        self.mean = nn.Linear(width, latent)
        self.logvar = nn.Linear(width, latent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mean(self.trunk(x))

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.mean(h), self.logvar(h).clamp(-20.0, 20.0)


@register("vae", VAEConfig)
class VAE(AutoEncoder):
    """image -> trunk -> (mean, logvar) -> z = mean + eps*std (training) | mean (deployment) -> decoder -> image"""

    config: VAEConfig
    encoder: GaussianEncoder

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        n = math.prod(config.in_shape)
        self.encoder = GaussianEncoder(n, config.hidden, config.latent)
        sizes = [config.latent, *reversed(config.hidden), n]
        self.decoder = nn.Sequential(mlp(sizes, nn.Sigmoid()), nn.Unflatten(1, tuple(config.in_shape)))

    def forward(self, x: torch.Tensor) -> AEOutput:
        mean, logvar = self.encoder.posterior(x)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar) if self.training else mean
        return AEOutput(x_hat=self.decoder(z), latent=mean, extras={"logvar": logvar})

    def loss(self, out: AEOutput, target: torch.Tensor) -> LossOutput:
        rec = reconstruction_loss(self.config.loss, out.x_hat, target)
        logvar = out.extras["logvar"]
        # KL(q(z|x) || N(0, I)) per image, divided by the pixel count so beta is comparable to the
        # per-pixel mean reconstruction loss.
        kl = -0.5 * torch.sum(1 + logvar - out.latent.pow(2) - logvar.exp(), dim=1).mean()
        kl = kl / math.prod(self.config.in_shape)
        total = rec + self.config.beta * kl
        return LossOutput(total=total, terms={"recon": float(rec.detach()), "kl": float(kl.detach())})
