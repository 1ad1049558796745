"""Scale-hyperprior codec (`hyperprior`): Ballé et al. 2018 (`bmshj2018-hyperprior` in CompressAI) on top of the
`codec` family's transforms, with a hyper-decoder that runs in integer arithmetic only.

    x --g_a--> y --h_a(|y|)--> z --round--> z_hat --h_s (integer)--> scale index k (M, H/2^d, W/2^d)
                \\--round--> y_hat --g_s--> x_hat          y_hat ~ N(0, scale_table[k]) discretised
    z_hat ~ the codec's factorized per-channel prior

* g_a, g_s and the factorized density model are the `codec` family's (this class subclasses `Codec`); the
  factorized prior models z here, so `entropy_tables` / `support` give z's integer tables unchanged.
* h_a: Conv3x3 + ReLU, then two stride-2 Conv5x5 (float, part of the encoder graph, int8-quantisable).
* h_s is built for integer inference (edgeae/bundling/hyper.py turns it into an ONNX graph of integer
  convolutions (im2col + MatMulInteger), int64 fixed-point requantisation, integer Clip and DepthToSpace on
  uint8; edgeae/runtime/inthyper.py is its numpy reference): per stage Conv3x3 to 4x channels + ReLU + PixelShuffle(2), then a Conv3x3 whose output t
  is the **scale-table index** in table steps: k = clip(round(t), 0, K-1), scale = scale_min * exp(k * delta)
  (K log-spaced scales from scale_min to scale_max). Its input z_hat is clipped to [-128, 127] (uint8 with
  zero point 128 in the integer graph).
* Quantisation-aware training of h_s (qat=True): per-output-channel symmetric int8 weights, uint8
  activations whose range follows an EMA of the batch maximum (a buffer, exported), and the rounded index, all
  straight-through; so the rate the training sees is the rate the integer decoder gives (within the
  requantiser's 2^-30 rounding; bench_hyperprior measures float vs integer bpp).
* Mean-scale (`means=True`, Minnen et al. 2018; with `hyper_signed=True` h_a sees y itself, as there, not
  |y|): h_s's last convolution has 2M outputs, the scale index and the mean of every y symbol, clipped to
  [-R, R] and continuous in training; the integer graph gives it in 1/P steps (`mean_phases`) and the runtime
  codes round(y) with the table of (scale index, mean phase), so y_hat stays round(y) (docs/HYPERPRIOR.md).
* Loss: lmbda * 255^2 * MSE + bpp(y) + bpp(z); terms "bpp", "bpp_y", "bpp_z", "distortion".

The total stride is 2^(d+2): z is y downsampled twice more, so training crops are multiples of 64 with d=4;
bundles pad images to y's stride 2^d only (the runtime edge-pads y to whole z positions, docs/FORMAT.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeae.train.models.base import AEOutput, LossOutput, full_precision
from edgeae.train.models.codec import (
    LIKELIHOOD_BOUND,
    Codec,
    CodecConfig,
    FactorizedPrior,
    ste_round,
    uniform_noise,
)
from edgeae.train.models.registry import register

Z_MIN, Z_MAX = -128, 127  # h_s input range (uint8 with zero point 128 in the integer graph)
ACT_LEVELS = 255  # uint8 activations in [0, 255]


@dataclass
class HyperpriorConfig(CodecConfig):
    channels: int = 64  # N
    latent_channels: int = 96  # M
    downsamplings: int = 4  # g_a stride 2^d; the hyper-latent adds 2 more
    hyper_channels: int = 64  # width of h_a / h_s
    hyper_latent_channels: int = 32  # Cz
    scale_levels: int = 64  # K entries of the log-spaced scale table
    scale_min: float = 0.11
    scale_max: float = 64.0
    qat: bool = True  # fake-quantise h_s in training (int8 weights, uint8 activations, rounded index)
    act_momentum: float = 0.01  # EMA rate of the activation-range observers
    means: bool = False  # mean-scale (Minnen et al. 2018): h_s also predicts an integer mean per y symbol
    mean_range: int = 127  # the means lie in [-R, R]
    # P: the integer hyper-decoder gives each mean in 1/P steps, and y's tables are indexed by (scale index,
    # mean phase); training uses the continuous mean (P = 1: integer means, rounded straight through)
    mean_phases: int = 8
    hyper_signed: bool = False  # h_a sees y rather than |y| (Minnen's mean-scale: the means need the signs)
    z_noise: bool = False  # training: h_s sees z + U(-1/2, 1/2) (CompressAI's entropy bottleneck), not round(z)
    # h_a and h_s learn this many times the trainer's lr (1: one group with g_a / g_s, as runs before it had),
    # e.g. to train new units grown by `--init` into wider hyper networks faster than the converged transforms
    hyper_lr_scale: float = 1.0


def scale_table(levels: int, lo: float, hi: float) -> np.ndarray:
    """K log-spaced scales, float64: scale[k] = lo * exp(k * log(hi / lo) / (K - 1))."""
    return np.exp(np.linspace(math.log(lo), math.log(hi), levels))


def _lower_bound(lik: torch.Tensor) -> torch.Tensor:
    # Same bound as the codec's prior: the value is clamped, the gradient still flows.
    return lik + (LIKELIHOOD_BOUND - lik).clamp_min(0).detach()


def gaussian_likelihood(y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """P(y_hat) of N(0, scale) integrated over [y - 1/2, y + 1/2], computed on the upper tail (accurate)."""
    v = y.abs()
    inv = 1.0 / (scale * math.sqrt(2.0))
    upper = 0.5 * torch.erfc((v - 0.5) * inv)
    lower = 0.5 * torch.erfc((v + 0.5) * inv)
    return _lower_bound(upper - lower)


class WeightQuantConv(nn.Conv2d):
    """Conv2d whose weight is fake-quantised per output channel to symmetric int8 when `fake_quant`."""

    fake_quant = True

    def weight_scale(self) -> torch.Tensor:
        return self.weight.detach().abs().amax(dim=(1, 2, 3)).clamp_min(1e-8) / 127.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if self.fake_quant:
            s = self.weight_scale().view(-1, 1, 1, 1)
            w = w + (torch.round(w / s).clamp(-127, 127) * s - w).detach()
        return F.conv2d(x, w, self.bias, padding=self.padding)


class ActQuant(nn.Module):
    """ReLU output -> uint8 grid [0, 255] * range / 255; `range` follows an EMA of the batch maximum."""

    fake_quant = True
    range: torch.Tensor  # a registered buffer

    def __init__(self, momentum: float) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("range", torch.zeros(()))

    def scale(self) -> float:
        return float(self.range.clamp_min(1e-6)) / ACT_LEVELS

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                m = a.detach().amax()
                if float(self.range) == 0.0:
                    self.range.copy_(m)
                else:
                    self.range.mul_(1 - self.momentum).add_(self.momentum * m)
        if not self.fake_quant:
            return a
        s = self.range.clamp_min(1e-6) / ACT_LEVELS
        inside = a <= self.range  # no gradient where the uint8 grid saturates: pushing there changes nothing
        a_ste = torch.where(inside, a, a.detach())
        return a_ste + (torch.clamp(torch.round(a / s), 0, ACT_LEVELS) * s - a_ste).detach()


class HyperSynthesis(nn.Module):
    """z_hat (Cz, h, w) -> t (M, 4h, 4w), the scale-table index before rounding (see module docstring)."""

    def __init__(self, cz: int, nh: int, m: int, momentum: float, init_index: float, means: bool = False) -> None:
        super().__init__()
        self.convs = nn.ModuleList([WeightQuantConv(cz, 4 * nh, 3, padding=1), WeightQuantConv(nh, 4 * nh, 3, padding=1)])
        self.acts = nn.ModuleList([ActQuant(momentum), ActQuant(momentum)])
        self.last = WeightQuantConv(nh, 2 * m if means else m, 3, padding=1)  # [index | mean]
        assert self.last.bias is not None  # built with a bias
        with torch.no_grad():  # scale 1 everywhere and (mean-scale) mean 0 everywhere: the means start silent,
            self.last.bias.fill_(0.0)  # random integer means would cost more than the scales save
            self.last.bias[:m].fill_(init_index)
            self.last.weight[m:].zero_()

    def set_fake_quant(self, on: bool) -> None:
        for mod in self.modules():
            if isinstance(mod, (WeightQuantConv, ActQuant)):
                mod.fake_quant = on

    def forward(self, z_hat: torch.Tensor) -> torch.Tensor:
        x = z_hat.clamp(Z_MIN, Z_MAX)
        for conv, act in zip(self.convs, self.acts, strict=True):
            x = F.pixel_shuffle(act(F.relu(conv(x))), 2)
        return self.last(x)


def hyper_analysis(m: int, nh: int, cz: int) -> nn.Sequential:
    """h_a: y (M, h, w) -> z (Cz, h/4, w/4). Its input is |y|; the `hyper_encoder` graph includes the Abs."""
    return nn.Sequential(nn.Conv2d(m, nh, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(nh, nh, 5, stride=2, padding=2), nn.ReLU(),
                         nn.Conv2d(nh, cz, 5, stride=2, padding=2))


class HyperEncoder(nn.Module):
    """y -> z = h_a(|y|) (scale only), or h_a(y) (`signed`: mean-scale, whose means need the signs): the
    `hyper_encoder` graph (float, encoder side only)."""

    def __init__(self, h_a: nn.Module, signed: bool = False) -> None:
        super().__init__()
        self.h_a = h_a
        self.signed = signed

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.h_a(y if self.signed else torch.abs(y))


@register("hyperprior", HyperpriorConfig)
class Hyperprior(Codec):
    """Scale-hyperprior codec: codec transforms, hyper-latent with a factorized prior, integer hyper-decoder."""

    config: HyperpriorConfig
    # `export --int8` leaves g_a's last conv in fp32 (`--int8-keep-fp32 encoder:none` quantises it too): y goes
    # straight to the rounding and its narrow tables, where int8 error costs bits, not dB. Measured on
    # pairs-s9's lambda-0.007 run, 19 photos/val images: +9.2% bytes -> +0.1% vs fp32 (docs/HYPERPRIOR.md).
    # Its first conv too: on an x86 CPU without VNNI (AVX2: u8 x s8 pairs summed in int16, which saturates
    # where 0..255 pixels meet full-range int8 weights) session 14's GPU-trained Balle-sized hyperprior-vr lost
    # 1.9-2.8 dB with it in int8, 0.01-0.03 dB with 7-bit weights (reduce_range), 0.002-0.008 dB with it in
    # fp32, 19 val crops at every quality (docs/MODELS.md). One int8 bundle must decode right on every host.
    int8_keep_fp32: ClassVar[dict[str, tuple[str, ...]]] = {"encoder": ("first", "last")}

    def __init__(self, config: HyperpriorConfig) -> None:
        if config.scale_levels < 2 or not 0 < config.scale_min < config.scale_max:
            raise ValueError("hyperprior needs scale_levels >= 2 and 0 < scale_min < scale_max")
        if config.hyper_channels < 1 or config.hyper_latent_channels < 1:
            raise ValueError("hyperprior hyper_channels and hyper_latent_channels must be >= 1")
        super().__init__(config)  # g_a as self.encoder, g_s as self.decoder, a factorized prior (replaced below)
        m, nh, cz = config.latent_channels, config.hyper_channels, config.hyper_latent_channels
        self.hyper_encoder = HyperEncoder(hyper_analysis(m, nh, cz), signed=config.hyper_signed)
        self.prior = FactorizedPrior(cz, tuple(config.filters))  # the factorized prior now models z
        self.scales_np = scale_table(config.scale_levels, config.scale_min, config.scale_max)
        self.log_step = math.log(config.scale_max / config.scale_min) / (config.scale_levels - 1)
        init_index = math.log(1.0 / config.scale_min) / self.log_step  # scale 1 to start
        if config.means and not (1 <= config.mean_phases <= 64 and 1 <= config.mean_range * config.mean_phases <= 1 << 15):
            raise ValueError("hyperprior needs 1 <= mean_phases <= 64 and 1 <= mean_range * mean_phases <= 32768")
        self.h_s = HyperSynthesis(cz, nh, m, config.act_momentum, init_index, config.means)
        self.h_s.set_fake_quant(config.qat)
        self.stride = 2 ** (config.downsamplings + 2)  # what training and PyTorch's forward take
        # What bundles pad images to: y's stride only (the runtime edge-pads y to whole z positions and codes
        # only y's own symbols, entropy_models/hyperprior.py); bundles before 2026-12-02 padded to `stride`.
        self.size_multiple = 2 ** config.downsamplings
        self._check_size(*config.in_shape[1:])

    # --- the scale path ---

    def scale_index(self, z_hat: torch.Tensor, integer_like: bool = True) -> torch.Tensor:
        """Float scale-table index of every y element: rounded + clipped (what the integer graph gives, with
        straight-through gradients) or, integer_like=False, continuous and only clipped (the float decoder)."""
        return self.scale_index_and_mean(z_hat, integer_like)[0]

    def scale_index_and_mean(self, z_hat: torch.Tensor, integer_like: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(scale index, mean or None), the mean clipped to [-R, R]: continuous (mean_phases P > 1: the integer
        graph gives it in 1/P steps, whose rate cost bench_hyperprior measures) or, P = 1, rounded straight
        through as the graph gives it."""
        t = self.h_s(z_hat)
        m = self.config.latent_channels
        mean = None
        if self.config.means:
            r = self.config.mean_range
            t, mean = t[:, :m], t[:, m:]
            mean = (mean if self.config.mean_phases > 1 else ste_round(mean)).clamp(-r, r)
        if integer_like:
            t = ste_round(t)
        return t.clamp(0, self.config.scale_levels - 1), mean

    def scales_from_index(self, index: torch.Tensor) -> torch.Tensor:
        return self.config.scale_min * torch.exp(index * self.log_step)

    def forward(self, x: torch.Tensor) -> AEOutput:
        self._check_size(*x.shape[-2:])
        y = self.encoder(x).float()
        with full_precision(y):  # h_a, h_s and the rates in float32 also when g_a/g_s train in bfloat16
            z = self.hyper_encoder(y)
            if self.training:
                z_noisy = uniform_noise(z)
                z_lik = self.prior.likelihood(z_noisy)
                z_hat = z_noisy if self.config.z_noise else ste_round(z)
                y_hat = ste_round(y)
                y_rate = y_hat if self.config.rate_ste else uniform_noise(y)
            else:
                z_hat = torch.round(z)
                z_lik = self.prior.likelihood(z_hat)
                y_hat = y_rate = torch.round(y)
            index, mean = self.scale_index_and_mean(z_hat, integer_like=self.config.qat)
            y_lik = gaussian_likelihood(y_rate if mean is None else y_rate - mean, self.scales_from_index(index))
        return AEOutput(x_hat=self.decoder(y_hat), latent=y,
                        extras={"likelihoods": y_lik, "z_likelihoods": z_lik, "z": z})

    def loss(self, out: AEOutput, target: torch.Tensor) -> LossOutput:
        n, _, h, w = target.shape
        bpp_y = -torch.log2(out.extras["likelihoods"]).sum() / (n * h * w)
        bpp_z = -torch.log2(out.extras["z_likelihoods"]).sum() / (n * h * w)
        mse = F.mse_loss(out.x_hat, target)
        bpp = bpp_y + bpp_z
        total = self.config.lmbda * 255.0**2 * mse + bpp
        return LossOutput(total=total, terms={"bpp": float(bpp.detach()), "bpp_y": float(bpp_y.detach()),
                                              "bpp_z": float(bpp_z.detach()), "distortion": float(mse.detach())})

    def load_base_state(self, state: dict[str, torch.Tensor]) -> None:
        """`edgeae train --init RUN`: a hyperprior run's weights; a mean-scale model also takes a scale-only
        run's, whose h_s gets a mean head of zeros (mean 0 everywhere: at first, exactly the scale-only model),
        and a model with wider hyper networks or more z channels takes a smaller one's (`_widened`).
        A `codec` (factorized) run gives g_a and g_s only: h_a, h_s and z's prior start fresh, so with
        `freeze_transforms` the two families code the very same y_hat and differ only in their entropy model.
        With `freeze_transforms` a hyperprior run gives its g_a and g_s only too: a new entropy model (of any
        hyper size: `hyper_channels`, `hyper_latent_channels`, means) learns on that run's frozen transforms."""
        codec_run = not any(k.startswith(("h_s.", "hyper_encoder.")) for k in state)
        if codec_run or self.config.freeze_transforms:  # g_a and g_s only
            for name, module in (("encoder", self.encoder), ("decoder", self.decoder)):
                module.load_state_dict({k[len(name) + 1:]: v for k, v in state.items()
                                        if k.startswith(name + ".")}, strict=True)
            return
        w, b = state.get("h_s.last.weight"), state.get("h_s.last.bias")
        if self.config.means and w is not None and b is not None and w.shape[0] == self.config.latent_channels:
            state = {**state, "h_s.last.weight": torch.cat([w, torch.zeros_like(w)]),
                     "h_s.last.bias": torch.cat([b, torch.zeros_like(b)])}
        self.load_state_dict(self._widened(state), strict=True)

    def _widened(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A smaller entropy model's weights (`hyper_channels`, `hyper_latent_channels` below this model's)
        grown into this one without changing what it computes: each old tensor fills the leading block of this
        model's freshly initialised one, and every conv input that is new (a new hidden unit, a new z channel)
        gets weight zero, so the new units start silent and learn from there (Net2Net-style widening). The
        transforms g_a / g_s must match exactly; only new z channels change anything (their rate, at first)."""
        own = self.state_dict()
        out = dict(state)
        for key, old in state.items():
            new = own.get(key)
            if new is None or new.shape == old.shape or not key.startswith(("h_s.", "hyper_encoder.", "prior.")):
                continue  # strict loading reports missing, extra and other mismatched keys
            if new.dim() != old.dim() or any(o > n for o, n in zip(old.shape, new.shape, strict=True)):
                continue
            grown = new.detach().clone()
            grown[tuple(slice(0, o) for o in old.shape)] = old
            if grown.dim() == 4 and new.shape[1] > old.shape[1]:  # a conv weight (out, in, kh, kw)
                grown[:, old.shape[1]:] = 0.0
            out[key] = grown
        return out

    def lr_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        """The codec's, and with hyper_lr_scale != 1 a third group for h_a and h_s at that multiple (a run's group
        layout is fixed: resuming keeps its config)."""
        if self.config.hyper_lr_scale <= 0:
            raise ValueError("hyperprior hyper_lr_scale must be > 0")
        if self.config.hyper_lr_scale == 1.0:
            return super().lr_groups()
        hyper = [p for p in (*self.hyper_encoder.parameters(), *self.h_s.parameters()) if p.requires_grad]
        return [*super().lr_groups(), (hyper, self.config.hyper_lr_scale)]

    @property
    def hyper_latent_shape(self) -> tuple[int, ...]:
        with torch.no_grad():
            z = self.hyper_encoder(self.encoder(torch.zeros(1, *self.config.in_shape)))
        return tuple(z.shape[1:])

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "hyper_latent_shape": list(self.hyper_latent_shape),
                "scale_levels": self.config.scale_levels}

    # --- export (edgeae/bundling/protocol.py) ---

    def edgeae_entropy(self, latents: np.ndarray, precision: int = 16) -> Any:
        """y quantisation, z and y integer tables, the hyper_encoder graph and the integer hyper_decoder."""
        from edgeae.bundling.hyper import entropy_for

        return entropy_for(self, latents, precision)

    def entropy_tables(self, precision: int = 16, tail_mass: float | None = None) -> dict[str, Any]:
        raise NotImplementedError("a hyperprior bundle's tables come from edgeae_entropy (the export protocol)")
