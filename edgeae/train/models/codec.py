"""Learned image codec (`codec`): a factorized-prior transform coder in the spirit of Ballé et al. 2018
(`bmshj2018-factorized` in CompressAI), written for int8 edge deployment.

    x (C, H, W) --g_a--> y (M, H/2^d, W/2^d) --round--> y_hat --g_s--> x_hat
                                   \\-- factorized entropy model p(y_hat) per latent channel --> bits

* g_a: d strided 5x5 convolutions (the last one to M latent channels, no activation); `extra_layers` adds
  stride-1 3x3 Conv+ReLU layers after each inner stage (mirrored in g_s) for depth at the same resolution.
* g_s: the mirror, upsampling by depth-to-space: Conv 3x3 to 4x channels, then PixelShuffle(2) (ONNX
  DepthToSpace), so every convolution of the decoder runs at the *low* resolution and no ConvTranspose is used.
* Non-linearity: ReLU by default. GDN (x / sqrt(beta + gamma * x^2)) is worth ~0.2-0.5 dB at equal rate
  in float, but its Pow/Sqrt/Div chain is not quantised by onnxruntime (it runs in float between
  Dequantize/Quantize pairs) and its dynamic range is hard to calibrate; Conv+ReLU fuses into one QLinearConv
  with per-channel int8 weights, which is what the int8 >= 2x-faster-than-fp32 target of the encoder needs.
  `gdn="synthesis"` puts IGDN in the (server-side, fp32) synthesis only, `gdn="both"` GDN in g_a too: trained
  from scratch with MSE alone, the ReLU transforms learn far slower (session 15, docs/MODELS.md).
* Quantisation proxy in training: additive uniform noise U(-1/2, 1/2) for the rate term; the decoder sees the
  straight-through rounded latent (Minnen & Singh 2020 "mixed" quantisation), so what it learns to decode
  is what the runtime sends. In eval mode both use hard `torch.round`.
* Entropy model: Ballé 2018 appendix 6.1 non-parametric density, one per latent channel: a monotone MLP
  (softplus-positive matrices, tanh gates) gives the logit of the CDF c(y); likelihood of an integer
  y_hat = c(y_hat + 1/2) - c(y_hat - 1/2). No auxiliary quantile loss: the exported integer support is read
  off the learned CDF numerically in `entropy_tables` (1e-9 tails by default), so one Adam trains everything.
* Loss: lmbda * 255^2 * MSE + bits per pixel (CompressAI's convention; lmbda 0.0018..0.0932 spans its
  quality ladder). Terms reported: "bpp" and "distortion" (MSE on the [0, 1] scale; not "mse", which the
  trainer's `evaluate` computes itself and would add to).

The model is fully convolutional: any H, W divisible by the total stride 2^d works (`--input-size` at
export rebuilds it at another size and loads the same weights); other sizes are refused with a clear error.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from edgeae.train.models.base import AEOutput, AutoEncoder, LossOutput, ModelConfig, full_precision
from edgeae.train.models.registry import register

LIKELIHOOD_BOUND = 1e-9


@dataclass
class CodecConfig(ModelConfig):
    loss: str = "mse"  # the distortion is always MSE (PSNR is the target); kept for the shared contract
    channels: int = 64  # width N of the hidden layers
    latent_channels: int = 32  # M
    downsamplings: int = 2  # d: total stride 2^d (MNIST 28 -> 7 with d=2; photos use 3-4)
    lmbda: float = 0.01  # rate-distortion trade-off: loss = lmbda * 255^2 * MSE + bpp
    kernel: int = 5  # analysis kernel size (synthesis uses 3x3 before each depth-to-space)
    filters: tuple[int, ...] = (3, 3, 3)  # hidden sizes of the per-channel CDF MLP
    tail_mass: float = 1e-9  # probability left outside the exported integer support, per side
    prior_lr_scale: float = 10.0  # the entropy model's learning rate = this x the trainer's lr
    extra_layers: int = 0  # stride-1 Conv3x3+ReLU layers after each inner stage, in g_a and mirrored in g_s
    # GDN (Balle et al. 2016) instead of ReLU: "synthesis" puts its inverse (IGDN) in g_s only -- the server's
    # fp32 decoder; the device's int8 encoder keeps Conv+ReLU -- "both" puts GDN in g_a too. MSE-only from
    # scratch on CPU, 500 steps: these transforms with ReLU 18.6 dB, IGDN in g_s 20.7, Balle's GDN/IGDN with
    # transposed convolutions 23.9 (docs/MODELS.md, session 15)
    gdn: str = "none"
    # g_s's width after each upsampling but the last (d - 1 values; empty: N everywhere). The high-resolution
    # stages hold most of the decoder's multiply-adds: N=128's photo g_s at (128, 64, 32) costs 0.27x, at
    # (128, 64, 64) ~0.4x (docs/MODELS.md, sessions 15-16)
    synthesis_widths: tuple[int, ...] = ()
    # g_s's upsampling: Conv3x3 + depth-to-space (all its convolutions at the low resolution), or Balle's 5x5
    # stride-2 transposed convolutions (with ReLU: 21.8 dB against 20.8 at 1000 MSE-only steps, session 15)
    upsample: str = "depth_to_space"
    freeze_transforms: bool = False  # train the entropy model only; g_a and g_s keep their (--init) weights
    # train g_s only: g_a, the entropy model (and a variable-rate model's gains) keep their --init weights, so
    # the payloads stay byte for byte what the --init run's bundle sends. With --init from a wider synthesis
    # (narrower synthesis_widths) g_s starts from that one cut down and refitted (`narrow_synthesis`)
    synthesis_only: bool = False
    # training: the rate term sees round(y) straight through (the symbols the coder will code) instead of
    # y + U(-1/2, 1/2), so the entropy model fits the discrete distribution (docs/HYPERPRIOR.md, session 11)
    rate_ste: bool = False


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward (straight-through)."""
    return x + (torch.round(x) - x).detach()


def uniform_noise(x: torch.Tensor) -> torch.Tensor:
    """x + U(-1/2, 1/2): the training proxy of rounding for the rate (Balle et al.)."""
    return x + torch.empty_like(x).uniform_(-0.5, 0.5)


class _Analysis(nn.Sequential):
    pass


GDN_MODES = ("none", "synthesis", "both")


class GDN(nn.Module):
    """Generalised divisive normalisation, y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2), or its inverse
    (x_i * sqrt(...), IGDN) for the synthesis. beta and gamma are kept non-negative by a square
    reparameterisation with lower bounds (as in Balle's and CompressAI's code); it exports as Mul, a 1x1 Conv,
    Sqrt and Div/Mul: local, so it tiles (edgeae.bundling.halo)."""

    def __init__(self, channels: int, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1) -> None:
        super().__init__()
        self.inverse = inverse
        self.pedestal = 2.0**-36
        self.beta_bound = (beta_min + self.pedestal) ** 0.5
        self.gamma_bound = self.pedestal**0.5
        self.beta = nn.Parameter(torch.sqrt(torch.ones(channels) + self.pedestal))
        self.gamma = nn.Parameter(torch.sqrt(gamma_init * torch.eye(channels) + self.pedestal))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = self.beta.clamp_min(self.beta_bound) ** 2 - self.pedestal
        gamma = self.gamma.clamp_min(self.gamma_bound) ** 2 - self.pedestal
        c = gamma.shape[0]
        norm = torch.sqrt(F.conv2d(x * x, gamma.reshape(c, c, 1, 1), beta))
        return x * norm if self.inverse else x / norm


def _activation(n: int, gdn: bool, inverse: bool) -> nn.Module:
    return GDN(n, inverse=inverse) if gdn else nn.ReLU()


UPSAMPLERS = ("depth_to_space", "transposed")


class _Synthesis(nn.Module):
    """Conv3x3 -> PixelShuffle(2) (or a 5x5 stride-2 ConvTranspose, `transposed`) -> ReLU (or IGDN) per stage;
    the last stage outputs the image, clamped to [0, 1]."""

    def __init__(self, m: int, n: int, c_out: int, steps: int, extra: int = 0, igdn: bool = False,
                 widths: tuple[int, ...] = (), upsample: str = "depth_to_space") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = m
        for i in range(steps):
            last = i == steps - 1
            width = n if last or not widths else widths[i]
            out = c_out if last else width
            if upsample == "transposed":
                layers.append(nn.ConvTranspose2d(prev, out, 5, stride=2, padding=2, output_padding=1))
            else:
                layers += [nn.Conv2d(prev, out * 4, 3, padding=1), nn.PixelShuffle(2)]
            if i < steps - 1:
                layers.append(_activation(width, igdn, inverse=True))
                layers += _extra(width, extra)
            prev = out
        self.body = nn.Sequential(*layers)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        # A hard clamp in training too: measured against a straight-through one (session 15) it trained the
        # demo's digits codecs 0.2-0.7 dB better and an IGDN photo codec no worse (docs/MODELS.md)
        return self.body(y).clamp(0.0, 1.0)


@torch.no_grad()
def narrow_synthesis(body: nn.Sequential, source: dict[str, torch.Tensor], y: torch.Tensor,
                     ridge: float = 1e-3) -> dict[str, torch.Tensor]:
    """A wider trained depth-to-space synthesis (`source`: the state of a `body` with the same layer layout and
    more channels, e.g. N everywhere for one with `synthesis_widths`) cut down to `body`'s widths, fitted on the
    latents `y` (N, M, h, w). Layer by layer, the wide net (teacher) and the narrow one (student) run side by
    side on y: at a narrower layer, keep the output channels the teacher uses most (mean square activation
    times the squared norm of the next layer's weights that read it; a depth-to-space channel is its group of
    4 conv outputs); a layer whose inputs were narrowed gets its weights refitted by ridge least squares from
    the student's activations to the teacher's pre-activations of the kept channels (channel pruning with
    reconstruction, He et al. 2017). IGDN parameters follow the kept channels. A start that `synthesis_only`
    training then fits: on the photo zoo's g_s, far closer than fresh weights or pruning alone."""
    layers = list(body)
    own = body.state_dict()
    out = dict(source)
    convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
    if any(isinstance(m, nn.ConvTranspose2d) for m in layers):
        raise ValueError("narrowing a synthesis needs depth-to-space upsampling (upsample=depth_to_space)")
    xt = xs = y.float()
    keep: torch.Tensor | None = None  # the teacher's channels the student's current activation holds
    for i, layer in enumerate(layers):
        if isinstance(layer, GDN):
            t_state = {k: out[f"{i}.{k}"] for k in ("beta", "gamma")}
            s_state = dict(t_state) if keep is None else {"beta": t_state["beta"][keep],
                                                          "gamma": t_state["gamma"][keep][:, keep].contiguous()}
            xt = functional_call(layer, t_state, (xt,))
            xs = functional_call(layer, s_state, (xs,))
            out[f"{i}.beta"], out[f"{i}.gamma"] = s_state["beta"], s_state["gamma"]
            continue
        if not isinstance(layer, nn.Conv2d):
            xt, xs = layer(xt), layer(xs)
            continue
        w, b = out[f"{i}.weight"].float(), out[f"{i}.bias"].float()
        pad = layer.padding
        zt = F.conv2d(xt, w, b, padding=pad)
        have, want = w.shape[0], own[f"{i}.weight"].shape[0]
        group = 4 if i + 1 < len(layers) and isinstance(layers[i + 1], nn.PixelShuffle) else 1
        units = torch.arange(have)
        chosen: torch.Tensor | None = None
        if want < have:
            nxt = next(j for j in convs if j > i)
            relu = any(isinstance(layers[j], nn.ReLU) for j in (i + 1, i + 2) if j < len(layers))
            energy = (F.relu(zt) if relu else zt).pow(2).mean(dim=(0, 2, 3)).reshape(have // group, group).sum(1)
            read = out[f"{nxt}.weight"].transpose(0, 1).flatten(1).pow(2).sum(1)
            chosen = torch.sort(torch.topk(energy * read, want // group).indices).values
            units = (chosen.view(-1, 1) * group + torch.arange(group)).reshape(-1)
        if keep is None:  # the student sees the teacher's very inputs: its kept rows are exact
            ws, bs = w[units], b[units]
        else:
            ws, bs = _ridge_conv(xs, zt[:, units], w.shape[-2:], pad, ridge)
        out[f"{i}.weight"], out[f"{i}.bias"] = ws.contiguous(), bs.contiguous()
        xt = zt
        xs = F.conv2d(xs, ws, bs, padding=pad)
        keep = chosen
    return out


def _synthesis_body(model: Any) -> nn.Sequential:
    """g_s's layer sequence (inside a variable-rate model's gain wrapper too)."""
    decoder = model.decoder.inner if hasattr(model.decoder, "inner") else model.decoder
    return decoder.body


def _ridge_conv(x: torch.Tensor, target: torch.Tensor, kernel: Any, padding: Any,
                ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of the conv from x (N, C, H, W) that best gives target (N, O, H, W): ridge least squares
    on the unfolded patches, the normal equations summed in float64 one image at a time (the ridge is relative
    to the mean patch energy)."""
    kh, kw = int(kernel[0]), int(kernel[1])
    dim = x.shape[1] * kh * kw + 1
    gram = torch.zeros(dim, dim, dtype=torch.float64)
    rhs = torch.zeros(dim, target.shape[1], dtype=torch.float64)
    for xi, ti in zip(x.split(1), target.split(1), strict=True):
        cols = F.unfold(xi, (kh, kw), padding=padding)[0].T.double()
        cols = torch.cat([cols, torch.ones(len(cols), 1, dtype=cols.dtype)], 1)
        gram += cols.T @ cols
        rhs += cols.T @ ti[0].reshape(ti.shape[1], -1).T.double()
    gram += ridge * gram.diagonal().mean() * torch.eye(dim, dtype=gram.dtype)
    sol = torch.linalg.solve(gram, rhs)  # (C*kh*kw + 1, O)
    weight = sol[:-1].T.reshape(target.shape[1], x.shape[1], kh, kw)
    return weight.float(), sol[-1].float()


def _extra(n: int, count: int) -> list[nn.Module]:
    """`count` stride-1 Conv3x3 + ReLU layers: depth without changing the resolution (int8-friendly)."""
    layers: list[nn.Module] = []
    for _ in range(count):
        layers += [nn.Conv2d(n, n, 3, padding=1), nn.ReLU()]
    return layers


class FactorizedPrior(nn.Module):
    """Per-channel learned CDF (Ballé et al. 2018, appendix 6.1): logits = MLP(y), monotone in y."""

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 4.0) -> None:
        super().__init__()
        self.channels = channels
        dims = (1, *filters, 1)
        scale = init_scale ** (1.0 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1.0 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.empty(channels, dims[i + 1], 1).uniform_(-0.5, 0.5)))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def logits_cdf(self, v: torch.Tensor) -> torch.Tensor:
        """v (C, 1, K) -> logit of the CDF at v, same shape."""
        x = v
        for i, (mat, bias) in enumerate(zip(self.matrices, self.biases, strict=True)):
            x = torch.matmul(F.softplus(mat), x) + bias
            if i < len(self.factors):
                x = x + torch.tanh(self.factors[i]) * torch.tanh(x)
        return x

    def likelihood(self, y: torch.Tensor) -> torch.Tensor:
        """p(y) = c(y + 1/2) - c(y - 1/2) per element of y (N, C, H, W), bounded below by 1e-9."""
        n, c = y.shape[:2]
        v = y.transpose(0, 1).reshape(c, 1, -1)
        lower, upper = self.logits_cdf(v - 0.5), self.logits_cdf(v + 0.5)
        # Subtract in the tail where it is accurate: flip the sign when both logits are positive.
        sign = -torch.sign(lower + upper).detach()
        lik = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()
        lik = lik.reshape(c, n, *y.shape[2:]).transpose(0, 1)
        # Lower bound whose gradient still flows (CompressAI's LowerBound, simplified).
        return lik + (LIKELIHOOD_BOUND - lik).clamp_min(0).detach()

    @torch.no_grad()
    def cdf_at(self, points: torch.Tensor) -> torch.Tensor:
        """CDF of every channel at `points` (K,) -> (C, K), float64."""
        v = points.to(torch.float32).expand(self.channels, 1, -1)
        return torch.sigmoid(self.logits_cdf(v).to(torch.float64)).reshape(self.channels, -1)


@register("codec", CodecConfig)
class Codec(AutoEncoder):
    """Learned image codec: strided-conv analysis, depth-to-space synthesis, factorized entropy model, lmbda*D + R."""

    config: CodecConfig

    def __init__(self, config: CodecConfig) -> None:
        super().__init__()
        c_in, h, w = config.in_shape
        if config.downsamplings < 1:
            raise ValueError(f"codec downsamplings must be >= 1, got {config.downsamplings}")
        if config.channels < 1 or config.latent_channels < 1:
            raise ValueError("codec channels and latent_channels must be >= 1")
        if config.lmbda <= 0:
            raise ValueError(f"codec lmbda must be > 0, got {config.lmbda}")
        if config.loss != "mse":
            raise ValueError(f"codec distortion is MSE (PSNR targets); loss={config.loss!r} is not supported")
        if config.extra_layers < 0:
            raise ValueError(f"codec extra_layers must be >= 0, got {config.extra_layers}")
        if config.kernel % 2 != 1:
            raise ValueError(f"codec kernel must be odd, got {config.kernel}")
        if config.gdn not in GDN_MODES:
            raise ValueError(f"codec gdn must be one of {', '.join(GDN_MODES)}, got {config.gdn!r}")
        if config.upsample not in UPSAMPLERS:
            raise ValueError(f"codec upsample must be one of {', '.join(UPSAMPLERS)}, got {config.upsample!r}")
        widths = tuple(int(v) for v in config.synthesis_widths)
        if widths and (len(widths) != config.downsamplings - 1 or min(widths) < 1):
            raise ValueError(f"codec synthesis_widths must be {config.downsamplings - 1} widths >= 1 (one per "
                             f"upsampling but the last), got {list(config.synthesis_widths)}")
        if config.synthesis_only and config.freeze_transforms:
            raise ValueError("codec synthesis_only trains g_s alone and freeze_transforms freezes it: choose one")
        self.config = config
        self.stride = 2**config.downsamplings
        self._check_size(h, w)
        n, m, k = config.channels, config.latent_channels, config.kernel
        enc: list[nn.Module] = []
        prev = c_in
        for i in range(config.downsamplings):
            last = i == config.downsamplings - 1
            enc.append(nn.Conv2d(prev, m if last else n, k, stride=2, padding=k // 2))
            if not last:
                enc += [_activation(n, config.gdn == "both", inverse=False), *_extra(n, config.extra_layers)]
            prev = n
        self.encoder = _Analysis(*enc)
        self.decoder = _Synthesis(m, n, c_in, config.downsamplings, config.extra_layers,
                                  igdn=config.gdn != "none", widths=widths, upsample=config.upsample)
        self.prior = FactorizedPrior(m, tuple(config.filters))
        if config.freeze_transforms:
            self.encoder.requires_grad_(False)
            self.decoder.requires_grad_(False)

    def _check_size(self, h: int, w: int) -> None:
        if h % self.stride or w % self.stride:
            raise ValueError(f"codec input {h}x{w} is not divisible by its total stride {self.stride} "
                             f"(downsamplings={self.config.downsamplings}); pad or crop the images")

    def forward(self, x: torch.Tensor) -> AEOutput:
        self._check_size(*x.shape[-2:])
        y = self.encoder(x).float()
        with full_precision(y):  # the rate in float32 also when the transforms train in bfloat16
            if self.training:
                y_hat = ste_round(y)  # straight-through rounding for the decoder
                likelihoods = self.prior.likelihood(y_hat if self.config.rate_ste else uniform_noise(y))
            else:
                y_hat = torch.round(y)
                likelihoods = self.prior.likelihood(y_hat)
        return AEOutput(x_hat=self.decoder(y_hat), latent=y, extras={"likelihoods": likelihoods})

    def loss(self, out: AEOutput, target: torch.Tensor) -> LossOutput:
        n, _, h, w = target.shape
        bpp = -torch.log2(out.extras["likelihoods"]).sum() / (n * h * w)
        mse = F.mse_loss(out.x_hat, target)
        total = self.config.lmbda * 255.0**2 * mse + bpp
        return LossOutput(total=total, terms={"bpp": float(bpp.detach()), "distortion": float(mse.detach())})

    def lr_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        """The parts that learn at their own rate, as (parameters, multiple of the trainer's lr), in group order:
        the small CDF MLP learns faster so short CPU runs reach a tight prior."""
        return [(list(self.prior.parameters()), self.config.prior_lr_scale)]

    def configure_optimizer(self, lr: float) -> torch.optim.Optimizer:
        """One Adam: everything else at lr (frozen parameters, freeze_transforms, left out), then `lr_groups`
        (same group layout with synthesis_only, whose frozen groups are empty)."""
        self._freeze()
        own = self.lr_groups()
        taken = {id(p) for params, _ in own for p in params}
        rest = [p for p in self.parameters() if id(p) not in taken and p.requires_grad]
        return torch.optim.Adam([{"params": rest, "lr": lr},
                                 *({"params": [p for p in params if p.requires_grad], "lr": lr * scale}
                                   for params, scale in own)])

    def _freeze(self) -> None:
        """synthesis_only: everything but g_s stops learning (no gradient, and no backward through g_a)."""
        if self.config.synthesis_only:
            trained = {id(p) for p in self.decoder.parameters()}
            for p in self.parameters():
                p.requires_grad_(id(p) in trained)

    def train(self, mode: bool = True) -> Codec:
        """synthesis_only: the frozen parts stay in eval mode (statistics that train, e.g. the hyperprior's
        activation ranges, hold still), while the codec itself trains (straight-through rounding to g_s)."""
        super().train(mode)
        if self.config.synthesis_only:
            self._freeze()
            for name, child in self.named_children():
                if name != "decoder":
                    child.eval()
        return self

    @torch.no_grad()
    def fit_init_state(self, state: dict[str, torch.Tensor],
                       images: Callable[[], torch.Tensor]) -> dict[str, torch.Tensor]:
        """`--init` from a run whose g_s is wider than this model's (synthesis_widths): its g_s cut down to
        these widths and refitted on the latents that run's own transforms give `images()` (`narrow_synthesis`;
        a variable-rate model's latents at every quality in turn). Any other state is returned as it is."""
        body = _synthesis_body(self)
        own_prefix = next(name for name, mod in self.named_modules() if mod is body) + "."
        own = body.state_dict()
        prefix = next((p for p in (own_prefix, "decoder.body.") if f"{p}0.weight" in state), None)
        if prefix is None:
            return state
        source = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if set(source) != set(own) or all(source[k].shape == own[k].shape for k in own):
            return state  # not a wider synthesis of the same layout: loading reports what does not fit
        probe: Any = copy.deepcopy(self).eval()
        rest = {k: v for k, v in state.items() if not k.startswith(prefix)}
        loader = getattr(probe, "load_base_state", None)
        if loader is not None:  # maps a plain run into a variable-rate model; needs g_s keys of this shape
            loader({**rest, **{prefix + k: v for k, v in own.items()}})
        else:
            probe.load_state_dict({**rest, **{own_prefix + k: v for k, v in own.items()}}, strict=True)
        seen: list[torch.Tensor] = []
        handle = _synthesis_body(probe).register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
        points = probe.operating_points() if hasattr(probe, "operating_points") else 1
        for q, chunk in enumerate(torch.chunk(images(), points)):
            with probe.at_quality(q) if points > 1 else contextlib.nullcontext():
                probe(chunk)
        handle.remove()
        fitted = narrow_synthesis(body, source, torch.cat(seen))
        return {**rest, **{prefix + k: v for k, v in fitted.items()}}

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "lmbda": self.config.lmbda, "total_stride": self.stride}

    # --- export hook ---

    @torch.no_grad()
    def support(self, tail_mass: float | None = None, limit: int = 1 << 14) -> tuple[np.ndarray, np.ndarray]:
        """Per channel, the integer range [lo, hi] outside which the learned density has < tail_mass per side."""
        tail = self.config.tail_mass if tail_mass is None else tail_mass
        r = 16
        while True:
            k = torch.arange(-r, r + 1, dtype=torch.float32)
            cdf = self.prior.cdf_at(k + 0.5).numpy()  # cdf[:, i] = P(y_hat <= k[i])
            below = cdf[:, 0] <= tail
            above = cdf[:, -1] >= 1 - tail
            if (below & above).all() or r >= limit:
                break
            r *= 2
        # lo: the smallest k with P(y_hat <= k) > tail; hi: one past the largest k with P(y_hat <= k) < 1 - tail,
        # so P(y_hat < lo) <= tail and P(y_hat > hi) <= tail.
        ks = k.numpy().astype(np.int64)
        lo = np.array([ks[np.nonzero(row > tail)[0][0]] for row in cdf], np.int64)
        hi = np.array([ks[idx[-1]] + 1 if len(idx := np.nonzero(row < 1 - tail)[0]) else ks[0] for row in cdf],
                      np.int64)
        hi = np.maximum(hi, lo)
        return lo, hi

    @torch.no_grad()
    def entropy_tables(self, precision: int = 16, tail_mass: float | None = None) -> dict[str, Any]:
        """Integer quantisation + range-coder tables read off the learned CDF (see module docstring).

        Returns offset (C ints: each channel's lowest symbol value), step (C ones), levels (one width for all
        channels: the widest support), frequencies (C x levels ints >= 1, each row summing to 2**precision).
        Symbol s of channel c stands for y_hat = offset[c] + s; the mass below the support goes to s = 0 and the
        mass above to the channel's last real symbol; padding symbols of narrower channels get frequency 1.
        """
        lo, hi = self.support(tail_mass)
        levels = int((hi - lo).max()) + 1
        total = 1 << precision
        if levels > total // 2:
            raise ValueError(f"the learned latent support needs {levels} levels; more than a {precision}-bit table holds")
        c = self.prior.channels
        grid = torch.arange(int(lo.min()), int(hi.max()) + 2, dtype=torch.float32)
        cdf = self.prior.cdf_at(grid - 0.5).numpy()  # cdf[:, j] = P(y_hat < grid[j]) (at the half-integer)
        probs = np.zeros((c, levels), np.float64)
        base = int(lo.min())
        for ch in range(c):
            width = int(hi[ch] - lo[ch]) + 1
            i0 = int(lo[ch]) - base
            upper = cdf[ch, i0 + 1 : i0 + width]  # P(y_hat <= lo + s) for s = 0 .. width-2
            edges = np.concatenate([[0.0], upper, [1.0]])
            probs[ch, :width] = np.maximum(np.diff(edges), 0.0)
        from edgeae.bundling.calibrate import frequencies_from_probabilities

        freq = frequencies_from_probabilities(probs, precision)
        return {"offset": [int(v) for v in lo], "step": [1] * c, "levels": levels, "precision": precision,
                "frequencies": freq.tolist()}


    def edgeae_entropy(self, latents: np.ndarray, precision: int = 16) -> Any:
        """The export protocol (docs/EXPORT.md): integer rounding and the learned prior's tables, not a
        calibrated quantiser: the prior decides the support; its rows are then refit to the rounded
        calibration latents (bundling.calibrate.refit_rows)."""
        from edgeae.bundling.calibrate import channel_counts, refit_rows
        from edgeae.bundling.protocol import EntropySection

        t = self.entropy_tables(precision)
        quant = {"bits": int(np.ceil(np.log2(t["levels"]))), "levels": int(t["levels"]),
                 "offset": [float(v) for v in t["offset"]], "step": [float(v) for v in t["step"]]}
        offset = np.asarray(t["offset"]).reshape(1, -1, *[1] * (latents.ndim - 2))
        sym = np.clip(np.round(latents) - offset, 0, t["levels"] - 1)  # what the runtime's quantiser gives
        counts = channel_counts(sym, int(t["levels"]))
        return EntropySection(quantization=quant, entropy={"coder": "range", "precision": precision,
                                                           "frequencies": refit_rows(t["frequencies"], counts, precision)})
