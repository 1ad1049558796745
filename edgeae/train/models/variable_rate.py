"""Variable-rate codecs (`codec-vr`, `hyperprior-vr`): one set of transforms, several operating points.

Gain units in the spirit of Cui et al. 2021 ("Asymmetric gained deep image compression"): quality q scales the
latent per channel before rounding, y_q = g_a(x) * gain[q], and the synthesis sees y_hat / gain[q]; every
quality has its own factorized prior (the codec's p(y), the hyperprior's p(z); the hyperprior's h_a/h_s are
shared: they see the scaled latent). Training draws one quality per batch (torch's global RNG, so resumes are
exact) and weighs its distortion with that quality's lmbda.

A trained `hyperprior-vr` exports as ONE multi-quality bundle (`edgeae export RUN`): shared unscaled graphs,
the gains and each quality's z tables in the manifest, the quality in the payload (docs/FORMAT.md, version 3).
Either family can also be deployed one quality at a time: `bake(model, q)` folds gain[q] into the last analysis
convolution (weights and bias times gain) and 1/gain[q] into the first synthesis convolution (input channels),
and keeps prior[q] -- an ordinary `codec` / `hyperprior` model, exported, quantised and run like any other.
Gains start at sqrt(lmbda_q / lmbda_mid) (quantisation step ~ 1/gain, MSE ~ step^2 ~ 1/lmbda).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeae.train.models.base import AEOutput, LossOutput
from edgeae.train.models.codec import Codec, CodecConfig
from edgeae.train.models.registry import build_model, make_config, register

DEFAULT_LAMBDAS = (0.0025, 0.005, 0.01, 0.02, 0.04)


class _Gained(nn.Module):
    """inner(x) * gain (encoder side) or inner(y / gain) (decoder side), gain of the owner's current quality."""

    def __init__(self, inner: nn.Module, owner: nn.Module, inverse: bool) -> None:
        super().__init__()
        self.inner = inner
        self._owner = [owner]  # not a registered submodule (no cycle in the module tree)
        self.inverse = inverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        owner: Any = self._owner[0]
        g = owner.gain().view(1, -1, 1, 1)
        return self.inner(x / g) if self.inverse else self.inner(x) * g


class _PriorSwitch(nn.Module):
    """Delegates to the owner's prior of the current quality (no parameters of its own)."""

    def __init__(self, owner: nn.Module) -> None:
        super().__init__()
        self._owner = [owner]

    def current(self) -> Any:
        owner: Any = self._owner[0]
        return owner.priors[owner.q]

    def likelihood(self, v: torch.Tensor) -> torch.Tensor:
        return self.current().likelihood(v)

    def cdf_at(self, points: torch.Tensor) -> torch.Tensor:
        return self.current().cdf_at(points)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.current(), name)


def _variable_rate(base_name: str, base_cls: type[Codec], base_cfg: type[CodecConfig]):
    @dataclass
    class VRConfig(base_cfg):  # type: ignore[valid-type, misc]
        lmbdas: tuple[float, ...] = DEFAULT_LAMBDAS  # one operating point per value, ascending

    VRConfig.__name__ = VRConfig.__qualname__ = f"VariableRate{base_cfg.__name__}"

    class VariableRate(base_cls):  # type: ignore[valid-type, misc]
        __doc__ = f"Variable-rate `{base_name}`: per-quality gain vectors and priors, shared transforms."
        base_family = base_name

        def __init__(self, config: Any) -> None:
            lm = tuple(float(v) for v in config.lmbdas)
            if len(lm) < 2 or any(v <= 0 for v in lm) or list(lm) != sorted(lm):
                raise ValueError(f"lmbdas must be >= 2 positive values in ascending order, got {config.lmbdas}")
            super().__init__(config)
            m = config.latent_channels
            mid = lm[len(lm) // 2]
            init = torch.tensor([0.5 * math.log(v / mid) for v in lm]).view(-1, 1).repeat(1, m)
            self.log_gains = nn.Parameter(init)
            base_prior: Any = self.prior
            self.priors = nn.ModuleList([copy.deepcopy(base_prior) for _ in lm])
            self.prior: Any = _PriorSwitch(self)
            encoder: Any = self.encoder
            decoder: Any = self.decoder
            self.encoder: Any = _Gained(encoder, self, inverse=False)
            self.decoder: Any = _Gained(decoder, self, inverse=True)
            self.lmbdas = lm
            self.q = self.quality = len(lm) // 2

        def load_base_state(self, state: dict[str, torch.Tensor]) -> None:
            """Weights of a variable-rate run (as they are) or of a plain base-family run: its transforms, and
            its prior copied to every quality; the gains keep their initialisation."""
            if "log_gains" in state:
                self.load_state_dict(state, strict=True)
                return
            mapped: dict[str, torch.Tensor] = {}
            for key, v in state.items():
                head, _, rest = key.partition(".")
                if head in ("encoder", "decoder"):
                    mapped[f"{head}.inner.{rest}"] = v
                elif head == "prior":
                    for q in range(len(self.lmbdas)):
                        mapped[f"priors.{q}.{rest}"] = v.clone()
                else:
                    mapped[key] = v
            result = self.load_state_dict(mapped, strict=False)
            if result.unexpected_keys or set(result.missing_keys) != {"log_gains"}:
                raise RuntimeError(f"not a {base_name} state: missing {result.missing_keys[:3]}, unexpected "
                                   f"{result.unexpected_keys[:3]}")

        def gain(self) -> torch.Tensor:
            return torch.exp(self.log_gains[self.q])

        def operating_points(self) -> int:
            return len(self.lmbdas)

        @contextlib.contextmanager
        def at_quality(self, q: int) -> Iterator[None]:
            if not 0 <= q < len(self.lmbdas):
                raise ValueError(f"quality must be in 0..{len(self.lmbdas) - 1}, got {q}")
            old = self.quality
            self.quality = self.q = q
            try:
                yield
            finally:
                self.quality = self.q = old

        def forward(self, x: torch.Tensor) -> AEOutput:
            self.q = int(torch.randint(len(self.lmbdas), (1,))) if self.training else self.quality
            out = super().forward(x)
            out.extras["quality"] = torch.tensor(self.q)
            return out

        def loss(self, out: AEOutput, target: torch.Tensor) -> LossOutput:
            base = super().loss(out, target)  # with config.lmbda; swap in this quality's
            q = int(out.extras["quality"])
            mse = F.mse_loss(out.x_hat, target)
            total = base.total + (self.lmbdas[q] - self.config.lmbda) * 255.0**2 * mse
            return LossOutput(total=total, terms=base.terms)

        def lr_groups(self) -> list[tuple[list[nn.Parameter], float]]:
            """The base family's groups, its prior's (empty here: `prior` is the switch) given to the per-quality
            priors, which so learn `prior_lr_scale` times faster (the group layout of runs made before)."""
            base = super().lr_groups()
            return [(list(self.priors.parameters()), self.config.prior_lr_scale), *base[1:]]

        def summary(self) -> dict[str, Any]:
            s = super().summary()
            s.pop("lmbda", None)
            return {**s, "lmbdas": list(self.lmbdas),
                    "gains_mean": [float(torch.exp(g).mean()) for g in self.log_gains.detach()]}

        def support(self, *args: Any, **kwargs: Any):  # type: ignore[override]
            raise TypeError("a variable-rate codec exports one quality at a time: bake(model, q) first (`python "
                            "-m edgeae.zoo.build`); a hyperprior-vr exports every quality in one bundle")

        entropy_tables = support

        # Export (edgeae.export / `edgeae export RUN`): the graphs are the shared, unscaled transforms; the
        # gains and each quality's z tables go to the manifest (bundling/hyper.py, entropy_for_qualities)
        @property
        def edgeae_encoder(self) -> nn.Module:
            return self.encoder.inner

        @property
        def edgeae_decoder(self) -> nn.Module:
            return self.decoder.inner

        def edgeae_entropy(self, latents: Any, precision: int = 16) -> Any:
            if base_name != "hyperprior":
                self.support()  # raises: bake per quality
            from edgeae.bundling.hyper import entropy_for_qualities

            return entropy_for_qualities(self, latents, precision)

    VariableRate.__name__ = VariableRate.__qualname__ = f"VariableRate{base_cls.__name__}"
    register(f"{base_name}-vr", VRConfig)(VariableRate)
    return VRConfig, VariableRate


VariableRateCodecConfig, VariableRateCodec = _variable_rate("codec", Codec, CodecConfig)
if importlib.util.find_spec("edgeae.train.models.hyperprior") is not None:
    from edgeae.train.models.hyperprior import Hyperprior, HyperpriorConfig

    VariableRateHyperpriorConfig, VariableRateHyperprior = _variable_rate("hyperprior", Hyperprior, HyperpriorConfig)


@torch.no_grad()
def bake(model: Any, q: int) -> Any:
    """Quality `q` of a variable-rate model as a plain model of its base family (gains folded into the
    transforms, that quality's prior); same outputs as `model.at_quality(q)` up to float rounding."""
    base = model.base_family
    names = {f.name for f in fields(make_config(base))}
    values = {k: v for k, v in model.config.to_dict().items() if k in names}
    values["lmbda"] = model.lmbdas[q]
    plain = build_model(base, make_config(base, **values))
    gain = torch.exp(model.log_gains[q]).detach()
    state: dict[str, torch.Tensor] = {}
    for key, v in model.state_dict().items():
        if key == "log_gains" or key.startswith("priors."):
            continue
        key = key.replace("encoder.inner.", "encoder.", 1) if key.startswith("encoder.inner.") else key
        key = key.replace("decoder.inner.", "decoder.", 1) if key.startswith("decoder.inner.") else key
        state[key] = v.clone()
    for key, v in model.priors[q].state_dict().items():
        state[f"prior.{key}"] = v.clone()
    last = [n for n, m in plain.encoder.named_modules() if isinstance(m, nn.Conv2d)][-1]
    first = [n for n, m in plain.decoder.named_modules() if isinstance(m, nn.Conv2d)][0]
    state[f"encoder.{last}.weight"] = state[f"encoder.{last}.weight"] * gain.view(-1, 1, 1, 1)
    state[f"encoder.{last}.bias"] = state[f"encoder.{last}.bias"] * gain
    state[f"decoder.{first}.weight"] = state[f"decoder.{first}.weight"] / gain.view(1, -1, 1, 1)
    plain.load_state_dict(state, strict=True)
    return plain.eval()
