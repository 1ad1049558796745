"""Classical baselines through Pillow: JPEG and WebP (lossy, a quality sweep) and PNG (lossless).

Sizes are whole files, headers included, exactly what `Image.save` writes with these options:

    jpeg: quality=q, optimize=True (optimal Huffman tables: lossless, ~40% smaller on MNIST than Pillow's
          default tables; 4:2:0 chroma subsampling for RGB, baseline)
    webp: quality=q, lossless=False, method=6 (libwebp's slowest, smallest setting; WebP stores RGB: gray
          images are saved as RGB and read back as L)
    png:  optimize=True (zlib level 9 plus filter search), lossless

Every baseline gets its best-compressing encoder settings: a learned codec must beat the real thing.

On tiny images (8x8 digits) the JPEG header alone is hundreds of bytes; that is part of the honest
comparison, not a bug.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np

from edgeae.evaluate.metrics import as_nhwc, ms_ssim, ms_ssim_applies, psnr, ssim
from edgeae.evaluate.results import RDPoint

LOSSY = ("jpeg", "webp")
CODECS = ("jpeg", "webp", "png")
DEFAULT_QUALITIES = (1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
_FORMATS = {"jpeg": "JPEG", "webp": "WEBP", "png": "PNG"}


def parse_codecs(text: str | Iterable[str]) -> tuple[str, ...]:
    names = [c.strip().lower() for c in (text.split(",") if isinstance(text, str) else text) if c.strip()]
    bad = [c for c in names if c not in CODECS]
    if bad:
        raise ValueError(f"unknown codec(s) {', '.join(bad)}; choose from {', '.join(CODECS)}")
    return tuple(dict.fromkeys(names))


def save_options(codec: str, quality: int | None) -> dict:
    if codec == "png":
        return {"optimize": True}
    if quality is None or not 0 <= quality <= 100:
        raise ValueError(f"{codec} needs a quality in 0..100, got {quality}")
    if codec == "jpeg":
        return {"quality": int(quality), "optimize": True}
    return {"quality": int(quality), "lossless": False, "method": 6}


def roundtrip(image: np.ndarray, codec: str, quality: int | None = None) -> tuple[bytes, np.ndarray]:
    """One uint8 image (H, W) or (H, W, 1|3) -> (file bytes, decoded uint8 image of the same shape)."""
    from PIL import Image

    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {a.dtype}")
    gray = a.ndim == 2 or a.shape[-1] == 1
    mode = "L" if gray else "RGB"
    pil = Image.fromarray(a.reshape(a.shape[:2]) if gray else a, mode)
    buf = io.BytesIO()
    pil.save(buf, format=_FORMATS[codec], **save_options(codec, quality))
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as im:
        out = np.asarray(im.convert(mode), dtype=np.uint8)
    return data, out.reshape(a.shape)


def settings(codecs: Iterable[str], qualities: Iterable[int]) -> list[tuple[str, int | None]]:
    qs = sorted(set(int(q) for q in qualities))
    out: list[tuple[str, int | None]] = []
    for c in codecs:
        out += [(c, None)] if c == "png" else [(c, q) for q in qs]
    return out


def evaluate_classical(images: np.ndarray, codecs: Iterable[str] = CODECS,
                       qualities: Iterable[int] = DEFAULT_QUALITIES, keep: int = 0, progress=None,
                       keep_per_image: bool = True) -> list[RDPoint]:
    """Every codec setting on every image: one RDPoint per (codec, quality).

    `images`: a uint8 batch (N, H, W) gray or (N, H, W, C); `keep`: decoded images kept for the
    first `keep` images (for the report's grid); `progress`: a callable(advance) or None.
    """
    x = as_nhwc(images, batch=True)
    n, h, w, _ = x.shape
    points = []
    for codec, q in settings(codecs, qualities):
        sizes, decoded = [], np.empty_like(x)
        for i in range(n):
            data, decoded[i] = roundtrip(x[i], codec, q)
            sizes.append(len(data))
            if progress:
                progress(1)
        ms = ms_ssim(x, decoded) if ms_ssim_applies(h, w) else None
        setting = "lossless" if q is None else f"q={q}"
        points.append(RDPoint.build(codec, codec, setting, sizes, psnr(x, decoded), ssim(x, decoded), ms, h * w,
                                    keep_per_image, lossless=codec == "png", quality=q,
                                    decoded=decoded[:keep].copy() if keep else None))
    return points
