"""Sparse autoencoder (seed 004): a dense AE whose loss adds an L1 or KL-to-target-rate penalty on the code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from edgeae.train.models.base import AEOutput, LossOutput, reconstruction_loss
from edgeae.train.models.dense import DenseAE, DenseConfig
from edgeae.train.models.registry import register

NEAR_ZERO = 1e-2  # a code unit below this counts as inactive


@dataclass
class SparseConfig(DenseConfig):
    latent: int = 64
    penalty: str = "l1"  # "l1" or "kl" (KL between a target rate and each unit's mean activation)
    weight: float = 1e-3
    target_rate: float = 0.05


@register("sparse", SparseConfig)
class SparseAE(DenseAE):
    """image -> dense encoder -> ReLU code (penalised towards zero) -> dense decoder -> image"""

    config: SparseConfig

    def loss(self, out: AEOutput, target: torch.Tensor) -> LossOutput:
        cfg = self.config
        rec = reconstruction_loss(cfg.loss, out.x_hat, target)
        z = out.latent
        if cfg.penalty == "l1":
            pen = z.abs().mean()
        elif cfg.penalty == "kl":
            # Squash to (0, 1) so a mean activation is a rate; ReLU codes are >= 0.
            rho_hat = torch.tanh(z).mean(0).clamp(1e-6, 1 - 1e-6)
            rho = cfg.target_rate
            pen = (rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))).sum()
        else:
            raise ValueError(f"sparse penalty must be 'l1' or 'kl', got {cfg.penalty!r}")
        total = rec + cfg.weight * pen
        return LossOutput(
            total=total,
            terms={"recon": float(rec.detach()), "sparsity": float(pen.detach()), "near_zero": near_zero_fraction(z)},
        )

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "near_zero_threshold": NEAR_ZERO}


def near_zero_fraction(z: torch.Tensor) -> float:
    """Fraction of latent units whose magnitude is below NEAR_ZERO: the sparsity users see."""
    return float((z.detach().abs() < NEAR_ZERO).float().mean())
