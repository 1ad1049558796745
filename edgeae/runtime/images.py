"""User images (arrays, PIL images, files) <-> the graphs' float32 NCHW input in [0, 1]; never resized."""

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


class ImageAdapter:
    """Converts user input to the graph input of one bundle; the affine map is precomputed once."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        c, h, w = spec.shape
        self.chw, self.hwc = (c, h, w), (h, w, c)
        self.any_size = spec.dynamic_size
        self.scale = np.float32(spec.scale)
        self.offset = np.float32(spec.offset)
        # Float input in [0, 1] means uint8 / 255, so it goes through the same map: x * 255 * scale + offset.
        self.float_scale = np.float32(255.0 * spec.scale)
        self.float_identity = abs(255.0 * spec.scale - 1.0) < 1e-9 and spec.offset == 0.0

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
            out = np.multiply(x, self.scale, dtype=np.float32, out=np.empty(x.shape, np.float32))
            if self.offset:
                out += self.offset
            return out
        lo, hi = x.min(), x.max()
        if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
            raise InputError(f"float images must be in [0, 1], got values in [{lo}, {hi}]; "
                             "divide 0..255 data by 255 or pass uint8")
        if self.float_identity:
            return np.ascontiguousarray(x, dtype=np.float32)  # no copy when it already is
        out = np.multiply(x, self.float_scale, dtype=np.float32, out=np.empty(x.shape, np.float32))
        if self.offset:
            out += self.offset
        return out

    def load(self, source: Any) -> np.ndarray:
        """One PIL image or image file -> uint8 (H, W) or (H, W, 3) in the bundle's channel order."""
        mode = self.spec.channel_order
        if isinstance(source, (str, os.PathLike)):
            return np.asarray(self._open(Path(source), mode), dtype=np.uint8)
        if _is_pil(source):
            self._check_size(source.size, "the image")
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

    def _open(self, path: Path, mode: str) -> Any:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                self._check_size(im.size, str(path))  # from the header, before any pixel is decoded
                return im.convert(mode)
        except InputError:  # a ValueError itself: let it through unchanged
            raise
        except FileNotFoundError:
            raise InputError(f"image file {path} does not exist") from None
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
            raise InputError(f"cannot read image {path}: {exc}") from None


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
