"""One registry of model families: name -> (config class, module class); a duplicate name is an error."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from edgeae.train.models.base import AutoEncoder, ModelConfig

_REGISTRY: dict[str, tuple[type[ModelConfig], type[AutoEncoder]]] = {}


def register(name: str, config_cls: type[ModelConfig]):
    """Class decorator: `@register("conv", ConvConfig) class ConvAE(AutoEncoder)`."""

    def deco(cls: type[AutoEncoder]) -> type[AutoEncoder]:
        if name in _REGISTRY:
            raise ValueError(f"model family {name!r} is already registered")
        _REGISTRY[name] = (config_cls, cls)
        cls.family = name  # type: ignore[attr-defined]
        return cls

    return deco


def families() -> dict[str, tuple[type[ModelConfig], type[AutoEncoder]]]:
    _load_builtin()
    return dict(_REGISTRY)


def make_config(name: str, **values: Any) -> ModelConfig:
    """Build a family's config from JSON-like values, ignoring None and coercing lists to tuples."""
    cfg_cls, _ = _lookup(name)
    known = {f.name for f in fields(cfg_cls)}
    unknown = sorted(k for k, v in values.items() if v is not None and k not in known)
    if unknown:
        raise ValueError(f"model {name!r} has no option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    clean: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if v is not None}
    return cfg_cls(**clean)


def build_model(name: str, config: ModelConfig | None = None, **values: Any) -> AutoEncoder:
    _, model_cls = _lookup(name)
    return model_cls(config if config is not None else make_config(name, **values))


def _lookup(name: str) -> tuple[type[ModelConfig], type[AutoEncoder]]:
    _load_builtin()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model family {name!r}; choose one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def _load_builtin() -> None:
    # Importing the family modules runs their @register decorators. A broken family module raises here, with
    # its own traceback: it must not look like an unknown family.
    # variable_rate: codec-vr, hyperprior-vr
    from edgeae.train.models import codec, conv, dense, hyperprior, sparse, vae, variable_rate  # noqa: F401
