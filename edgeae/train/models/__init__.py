"""The PyTorch model zoo: dense, conv, vae, sparse (and the learned `codec`), behind one registry."""

from edgeae.train.models.base import AEOutput, AutoEncoder, LossOutput, ModelConfig
from edgeae.train.models.registry import build_model, families, make_config, register

__all__ = ["AEOutput", "AutoEncoder", "LossOutput", "ModelConfig", "build_model", "families", "make_config", "register"]
