"""`edgeae.InputSpec`: what a model takes, as the user says it; becomes the manifest's `input` section.

Torch-free, so `edgeae.InputSpec` is cheap to import.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgeae.runtime.manifest import CHANNELS, tensor_layout
from edgeae.runtime.manifest import InputSpec as ManifestInput

_ORDER = {1: "L", 3: "RGB"}


@dataclass(frozen=True)
class InputSpec:
    """The model's input, without the batch axis.

    Images: `channels`, `height`, `width` (1 = gray, 3 = RGB). What the model was trained on:
      range=(0, 1)           pixels / 255 (the default)
      range=(-1, 1)          pixels / 127.5 - 1
      mean=..., std=...      torchvision's Normalize after /255: (pixels / 255 - mean[c]) / std[c]
      (range and mean/std combine: (range-mapped - mean) / std)
    The decoder's output is read back through the inverse and clipped to 0..255 (a decoder without a sigmoid
    is fine). `dynamic_size=True`: the model is fully convolutional, the bundle takes any H and W
    (`size_multiple`: what sizes are padded to; default the latent's stride).

    Tensors (`shape=(C, L)` of a sensor window, `(D,)` of a feature vector): raw floats, optionally
    standardised per channel by mean/std; decoded back in the user's units, unclipped.
    """

    channels: int | None = None
    height: int | None = None
    width: int | None = None
    shape: tuple[int, ...] | None = None  # tensors (or images, instead of channels/height/width)
    kind: str | None = None  # "image" or "tensor"; default: tensor when `shape` is given, else image
    range: tuple[float, float] | None = None
    mean: float | Sequence[float] | None = None
    std: float | Sequence[float] | None = None
    channel_order: str | None = None  # images: "L" or "RGB" (default from channels)
    dynamic_size: bool = False
    size_multiple: int | None = None

    @property
    def resolved_kind(self) -> str:
        return self.kind or ("tensor" if self.shape is not None else "image")

    @property
    def dims(self) -> tuple[int, ...]:
        """(C, H, W) for images, the tensor shape for tensors; ValueError if under- or over-specified."""
        chw = (self.channels, self.height, self.width)
        if self.shape is not None:
            if any(v is not None for v in chw):
                raise ValueError("give either shape= or channels/height/width, not both")
            dims = tuple(int(v) for v in self.shape)
        else:
            if any(v is None for v in chw):
                raise ValueError("images need channels, height and width (or shape=(C, H, W))")
            dims = tuple(int(v) for v in chw)  # type: ignore[arg-type]
        if self.resolved_kind == "image" and len(dims) != 3:
            raise ValueError(f"an image input is (C, H, W), got shape {dims}; use kind='tensor' for other data")
        if not 1 <= len(dims) <= 4 or min(dims) < 1:
            raise ValueError(f"input shape must have 1 to 4 positive dimensions, got {dims}")
        return dims

    def normalisation(self) -> tuple[float | tuple[float, ...], float | tuple[float, ...]]:
        """(scale, offset) of the manifest: graph input = value * scale + offset, per channel or shared."""
        dims = self.dims
        c = dims[0]
        if self.resolved_kind == "image":
            lo, hi = self.range if self.range is not None else (0.0, 1.0)
            if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
                raise ValueError(f"range must be (low, high) with high > low, got {self.range}")
            scale0, offset0 = (hi - lo) / 255.0, float(lo)
        else:
            if self.range is not None:
                raise ValueError("range= is for images (what pixels 0..255 map to); tensors take mean=/std=")
            scale0, offset0 = 1.0, 0.0
        if self.mean is None and self.std is None:
            return scale0, offset0
        mean, std = _channels(self.mean, c, "mean", 0.0), _channels(self.std, c, "std", 1.0)
        if any(not (math.isfinite(s) and s > 0) for s in std):
            raise ValueError(f"std must be positive, got {std}")
        scale = tuple(scale0 / s for s in std)
        offset = tuple((offset0 - m) / s for m, s in zip(mean, std, strict=True))
        if len(set(scale)) == 1 and len(set(offset)) == 1:
            return scale[0], offset[0]
        return scale, offset

    def to_manifest(self, size_multiple: int = 0) -> ManifestInput:
        dims = self.dims
        scale, offset = self.normalisation()
        if self.resolved_kind == "tensor":
            if self.dynamic_size:
                raise ValueError("dynamic_size is for images (any H and W); tensors have one shape")
            return ManifestInput(shape=dims, channel_order=None, scale=scale, offset=offset,
                                 layout=tensor_layout(len(dims)), kind="tensor")
        c = dims[0]
        order = self.channel_order or _ORDER.get(c)
        if order not in CHANNELS or CHANNELS[order] != c:
            raise ValueError(f"images have 1 (gray, 'L') or 3 ('RGB') channels, got {c} channels"
                             + (f" with channel_order {self.channel_order!r}" if self.channel_order else "")
                             + "; use kind='tensor' for other data")
        return ManifestInput(shape=dims, channel_order=order, scale=scale, offset=offset, kind="image",
                             size_multiple=size_multiple)

    def describe(self) -> str:
        dims = "x".join(map(str, self.dims))
        if self.resolved_kind == "tensor":
            return f"tensor {dims}"
        return f"{dims} {self.channel_order or _ORDER.get(self.dims[0], '?')} image"


def _channels(v: Any, c: int, name: str, default: float) -> tuple[float, ...]:
    if v is None:
        return (default,) * c
    if isinstance(v, (int, float)):
        return (float(v),) * c
    vals = tuple(float(x) for x in v)
    if len(vals) == 1:
        return vals * c
    if len(vals) != c:
        raise ValueError(f"{name} has {len(vals)} values but the input has {c} channels")
    return vals
