"""User input <-> the graphs' float32 input by the manifest's normalisation: images (arrays, PIL images, files;
never resized) or raw float tensors (sensor windows, feature vectors)."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeae.errors import InputError
from edgeae.runtime.manifest import InputSpec

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm",
                            ".pnm"})


MAX_SIDE = 1 << 16  # any-size bundles: the largest H or W an image may have
# PIL modes by channel family: a gray bundle refuses colour files (and the reverse) unless asked to convert.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def input_adapter(spec: InputSpec, convert: bool = False) -> ImageAdapter | TensorAdapter:
    """The adapter for a bundle's input kind: images (uint8 / [0, 1] floats, files) or raw float tensors."""
    return TensorAdapter(spec) if spec.kind == "tensor" else ImageAdapter(spec, convert=convert)


def _affine(spec: InputSpec, ndim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel scale, offset and 1/scale as float32 arrays broadcasting over (N, C, ...)."""
    view = (1, -1) + (1,) * (ndim - 2)
    scale = np.asarray(spec.scales, np.float64)
    return (scale.astype(np.float32).reshape(view), np.asarray(spec.offsets, np.float32).reshape(view),
            (1.0 / scale).astype(np.float32).reshape(view))


class ImageAdapter:
    """Converts user images to the graph input of one bundle and decoder output back to pixels.

    Pixels p (uint8) map to p * scale[c] + offset[c] (docs/MANIFEST.md); the decoder's output maps back by the
    inverse. A file or PIL image whose channels (gray / colour) differ from the bundle's is refused like an
    array of the wrong shape, unless `convert=True` asks for Pillow's conversion."""

    def __init__(self, spec: InputSpec, convert: bool = False) -> None:
        self.spec = spec
        self.convert = convert
        c, h, w = spec.shape
        self.chw, self.hwc = (c, h, w), (h, w, c)
        self.any_size = spec.dynamic_size
        self.scale, self.offset, self.inverse = _affine(spec, 4)
        self.uniform = len(set(spec.scales)) == 1 and len(set(spec.offsets)) == 1
        self.plain = self.uniform and spec.offsets[0] == 0.0 and abs(255.0 * spec.scales[0] - 1.0) < 1e-9
        # Float input in [0, 1] means uint8 / 255, so it goes through the same map: x * 255 * scale + offset.
        self.float_scale = self.scale * np.float32(255.0)
        self.has_offset = any(spec.offsets)

    def __call__(self, images: Any) -> np.ndarray:
        """uint8 / float [0, 1] arrays, PIL images, paths, or a sequence of them -> float32 (N, C, H, W)."""
        if isinstance(images, np.ndarray):
            return self._to_float(self._nchw(images))
        if _is_single(images):
            return self._to_float(self._nchw(self.load(images)))
        if isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
            if not len(images):
                raise InputError("no images given")
            singles = [self._nchw(x if isinstance(x, np.ndarray) else self.load(x)) for x in images]
            if any(len(s) != 1 for s in singles):
                raise InputError("a list of images must hold single images; pass a batch as one array instead")
            kinds = {s.dtype.kind for s in singles}
            if len(kinds) > 1:
                raise InputError("a list of images mixes uint8 and float arrays; convert them to one kind")
            if len({s.shape for s in singles}) > 1:
                raise InputError("a list of images holds different sizes; encode each size separately")
            return self._to_float(np.concatenate(singles))
        raise InputError(f"cannot use {type(images).__name__} as images; pass a uint8 or float [0, 1] array, "
                         "a PIL image, a file path, or a list of them")

    def _fits(self, shape: tuple[int, ...], want: tuple[int, ...], hw: tuple[int, int]) -> bool:
        """`shape` equals `want`, where the H, W entries (positions `hw`) are free on any-size bundles."""
        if len(shape) != len(want):
            return False
        if not self.any_size:
            return shape == want
        return all(s == w or (i in hw and 1 <= s <= MAX_SIDE) for i, (s, w) in enumerate(zip(shape, want, strict=True)))

    def _nchw(self, a: np.ndarray) -> np.ndarray:
        """A view of `a` as (N, C, H, W) by matching the bundle's (C, H, W); an InputError if it cannot match."""
        if a.dtype != np.uint8 and a.dtype.kind != "f":
            raise InputError(f"images must be uint8 (0..255) or float in [0, 1], got dtype {a.dtype}")
        c, h, w = self.chw
        shape = a.shape
        if a.ndim == 2 and c == 1 and self._fits(shape, (h, w), (0, 1)):
            return a[None, None]
        if a.ndim == 3:
            if c == 1 and self._fits(shape[1:], (h, w), (0, 1)) and not (self.any_size and shape[-1] == 1):
                return a[:, None]  # (N, H, W)
            if self._fits(shape, self.hwc, (0, 1)):
                return a.transpose(2, 0, 1)[None]
            if self._fits(shape, self.chw, (1, 2)):
                return a[None]
        if a.ndim == 4:
            if self._fits(shape[1:], self.chw, (1, 2)):
                return a
            if self._fits(shape[1:], self.hwc, (0, 1)):
                return a.transpose(0, 3, 1, 2)
        raise InputError(f"image array of shape {shape} does not fit this bundle, which takes {self.describe()}; "
                         + ("give it the bundle's channels" if self.any_size else
                            "resize or crop the images first (edgeae never resizes silently)"))

    def describe(self) -> str:
        (c, h, w), order = self.chw, self.spec.channel_order
        batch = "(N, H, W) or " if c == 1 else ""
        if self.any_size:
            return (f"{order} images of any size (padded to a multiple of {self.spec.size_multiple}): (H, W, C), "
                    f"{batch}(N, H, W, C) or (N, C, H, W) with C={c}")
        return (f"{h}x{w} {order} images: (H, W, C) = {self.hwc}, {batch}(N, H, W, C) or (N, C, H, W) "
                f"with H={h}, W={w}, C={c}")

    def _to_float(self, x: np.ndarray) -> np.ndarray:
        if x.shape[0] == 0:
            raise InputError("no images given (the batch axis is empty)")
        if x.dtype == np.uint8:
            scale = self.scale.reshape(-1)[0] if self.uniform else self.scale
            out = np.multiply(x, scale, dtype=np.float32, out=np.empty(x.shape, np.float32))
            if self.has_offset:
                out += self.offset
            return out
        lo, hi = x.min(), x.max()
        if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
            raise InputError(f"float images must be in [0, 1], got values in [{lo}, {hi}]; "
                             "divide 0..255 data by 255 or pass uint8")
        if self.plain:
            return np.ascontiguousarray(x, dtype=np.float32)  # no copy when it already is
        out = np.multiply(x, self.float_scale, dtype=np.float32, out=np.empty(x.shape, np.float32))
        if self.has_offset:
            out += self.offset
        return out

    def pixels01(self, y: np.ndarray) -> np.ndarray:
        """Decoder output (graph space, N, C, H, W) -> float32 images in [0, 1], clipped (the inverse map)."""
        if self.plain:
            return np.clip(y, 0.0, 1.0).astype(np.float32, copy=False)
        u = np.subtract(y, self.offset, dtype=np.float32)
        u *= self.inverse
        u *= np.float32(1.0 / 255.0)
        return np.clip(u, 0.0, 1.0, out=u)

    def postprocess(self, y: np.ndarray, as_float: bool = False) -> np.ndarray:
        """Decoder output -> uint8 (N, H, W) / (N, H, W, C), or float32 (N, C, H, W) in [0, 1] with as_float."""
        if self.plain:
            return np.clip(y, 0.0, 1.0).astype(np.float32, copy=False) if as_float else to_uint8(y)
        x = self.pixels01(y)
        return x if as_float else to_uint8(x)

    def load(self, source: Any) -> np.ndarray:
        """One PIL image or image file -> uint8 (H, W) or (H, W, 3) in the bundle's channel order."""
        mode = self.spec.channel_order or "L"
        if isinstance(source, (str, os.PathLike)):
            return np.asarray(self._open(Path(source), mode), dtype=np.uint8)
        if _is_pil(source):
            self._check_size(source.size, "the image")
            self._check_mode(source.mode, "the image")
            return np.asarray(source.convert(mode) if source.mode != mode else source, dtype=np.uint8)
        raise InputError(f"cannot use {type(source).__name__} as an image; pass an array, a PIL image or a path")

    def _check_size(self, size: tuple[int, int], name: str) -> None:
        h, w = self.chw[1:]
        if self.any_size:
            if max(size) > MAX_SIDE:
                raise InputError(f"{name} is {size[1]}x{size[0]} (HxW); this bundle takes sides up to {MAX_SIDE}")
            return
        if size != (w, h):
            raise InputError(f"{name} is {size[1]}x{size[0]} (HxW) but this bundle takes {h}x{w}; "
                             "resize or crop it first (edgeae never resizes silently)")

    def _check_mode(self, mode: str, name: str) -> None:
        """Gray files for gray bundles, colour files for colour bundles, as with arrays; `convert` lifts it."""
        gray_file, gray_bundle = mode in GRAY_MODES, self.chw[0] == 1
        if self.convert or gray_file == gray_bundle:
            return
        have, want = ("gray", "colour (RGB)") if gray_file else ("colour", "gray (L)")
        raise InputError(f"{name} is a {have} image (mode {mode}) but this bundle takes {want} images; convert "
                         "it first, or pass convert=True (--convert on the command line) to let Pillow convert it")

    def _open(self, path: Path, mode: str) -> Any:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                self._check_size(im.size, str(path))  # from the header, before any pixel is decoded
                self._check_mode(im.mode, str(path))
                return im.convert(mode)
        except InputError:  # a ValueError itself: let it through unchanged
            raise
        except FileNotFoundError:
            raise InputError(f"image file {path} does not exist") from None
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
            raise InputError(f"cannot read image {path}: {exc}") from None


class TensorAdapter:
    """Raw float tensors (a sensor window (C, L), a feature vector (D,)) <-> the graph input, per channel
    x * scale[c] + offset[c] and back by the inverse; no clipping, no pixels."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self.shape = tuple(spec.shape)
        self.scale, self.offset, self.inverse = _affine(spec, len(self.shape) + 1)
        self.identity = set(spec.scales) == {1.0} and not any(spec.offsets)

    def __call__(self, x: Any) -> np.ndarray:
        """(*shape) or (N, *shape) real numbers -> float32 (N, *shape) graph input."""
        if isinstance(x, (list, tuple)):
            try:
                x = np.asarray(x)
            except ValueError:
                raise InputError("a list of tensors must all have the same shape; stack them first") from None
        if not isinstance(x, np.ndarray):
            raise InputError(f"cannot use {type(x).__name__} as a tensor; pass a float array of shape "
                             f"{self.describe()}")
        if x.dtype.kind not in "fiu":
            raise InputError(f"tensors must hold real numbers, got dtype {x.dtype}")
        if x.shape == self.shape:
            x = x[None]
        if x.shape[1:] != self.shape:
            raise InputError(f"array of shape {x.shape} does not fit this bundle, which takes {self.describe()}")
        if not len(x):
            raise InputError("no tensors given (the batch axis is empty)")
        x = np.asarray(x, np.float32)
        if not np.isfinite(x).all():
            raise InputError("tensors hold NaN or infinite values; clean or impute them first")
        if self.identity:
            return np.ascontiguousarray(x)
        out = x * self.scale
        out += self.offset
        return out

    def describe(self) -> str:
        return f"float tensors {self.shape} or (N, {', '.join(map(str, self.shape))})"

    def postprocess(self, y: np.ndarray, as_float: bool = True) -> np.ndarray:
        """Decoder output (graph space) -> float32 (N, *shape) in the user's units (the inverse map)."""
        if self.identity:
            return np.asarray(y, np.float32)
        out = np.subtract(y, self.offset, dtype=np.float32)
        out *= self.inverse
        return out


def _is_pil(x: Any) -> bool:
    # No Pillow import needed to ask: an object can only be a PIL image if PIL is already loaded.
    mod = sys.modules.get("PIL.Image")
    return mod is not None and isinstance(x, mod.Image)


def _is_single(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike)) or _is_pil(x)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Decoder output float (N, C, H, W) in [0, 1] -> uint8 (N, H, W) for gray or (N, H, W, C), rounded."""
    out = np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    return out[:, 0] if out.shape[1] == 1 else np.ascontiguousarray(out.transpose(0, 2, 3, 1))


def png_bytes(image: np.ndarray) -> bytes:
    """One uint8 image (H, W) or (H, W, C) as PNG file content."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
