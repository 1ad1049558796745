"""One photograph, three codecs, one byte budget: a pretrained bundle against JPEG and WebP (torch-free).

The bundle's payload size (header included) sets the budget; JPEG (optimize=True) and WebP (method 6) use
their highest quality whose file still fits in it (their smallest file when none fits: then they spend more
bytes, and the table says so). Returns bytes / bpp / PSNR / MS-SSIM per codec and, with `out`, writes a
side-by-side picture: original | bundle | JPEG | WebP, each captioned with its figures.

    from edgeae.zoo.compare import compare_at_budget
    result = compare_at_budget(image_uint8_hwc, "photo:3", out="side_by_side.png")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from edgeae.errors import InputError


def _scores(ref: np.ndarray, rec: np.ndarray, n_bytes: int) -> dict[str, Any]:
    from edgeae.evaluate.metrics import ms_ssim, psnr

    ms = ms_ssim(ref, rec, batch=False)
    return {"bytes": n_bytes, "bpp": 8 * n_bytes / (ref.shape[0] * ref.shape[1]),
            "psnr": float(psnr(ref, rec, batch=False)[0]), "ms_ssim": None if ms is None else float(ms[0])}


def fit_budget(image: np.ndarray, codec: str, budget: int) -> tuple[int, bytes, np.ndarray]:
    """The highest quality (0..100) whose `codec` file is at most `budget` bytes, else the smallest file."""
    from edgeae.evaluate.classical import roundtrip

    lo, hi = 0, 100
    best = None
    while lo <= hi:  # file size grows with quality (checked below by keeping the best that fits)
        mid = (lo + hi) // 2
        data, rec = roundtrip(image, codec, mid)
        if len(data) <= budget:
            best = (mid, data, rec)
            lo = mid + 1
        else:
            hi = mid - 1
    if best is None:
        data, rec = roundtrip(image, codec, 0)
        best = (0, data, rec)
    return best


def compare_at_budget(image: Any, bundle: Any = "photo:3", out: str | os.PathLike[str] | None = None,
                      precision: str = "int8") -> dict[str, Any]:
    """`image`: uint8 (H, W, 3) RGB array or an image file path; `precision`: the encoder's (the decoder runs
    fp32). See the module docstring."""
    from edgeae.runtime.codec import Decoder, Encoder

    if isinstance(image, (str, os.PathLike)):
        from PIL import Image

        with Image.open(image) as im:
            image = np.asarray(im.convert("RGB"))
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"compare_at_budget needs a uint8 (H, W, 3) RGB image, got {img.dtype} {img.shape}")
    enc, dec = Encoder(bundle, precision), Decoder(bundle, "fp32")  # zoo decoders are fp32
    payload = enc.encode(img[None])
    decoded = dec.decode(payload)
    rec = np.asarray(decoded[0]).reshape(img.shape)
    from edgeae import zoo

    name = bundle if zoo.is_name(bundle) else Path(getattr(bundle, "path", bundle)).name
    rows: dict[str, Any] = {"edgeae": {"setting": f"{name} ({precision})", **_scores(img, rec, len(payload))}}
    pictures = {"edgeae": rec}
    for codec in ("jpeg", "webp"):
        q, data, crec = fit_budget(img, codec, len(payload))
        rows[codec] = {"setting": f"quality {q}", **_scores(img, crec, len(data))}
        pictures[codec] = crec
    result = {"budget_bytes": len(payload), "size": list(img.shape[:2]), "codecs": rows}
    if out is not None:
        side_by_side(img, pictures, rows, Path(out))
        result["picture"] = str(out)
    return result


def side_by_side(original: np.ndarray, pictures: dict[str, np.ndarray], rows: dict[str, Any], out: Path) -> None:
    """original | each codec's picture, in a row, captions underneath; written atomically as PNG."""
    import io

    from PIL import Image, ImageDraw, ImageFont

    from edgeae.fsutil import write_atomic

    h, w = original.shape[:2]
    pad, cap = 8, 34
    panels = [("original", original, "")] + [
        (f"{k} {r['setting']}", pictures[k], f"{r['bytes']} B  {r['psnr']:.2f} dB  MS-SSIM "
         + ("-" if r["ms_ssim"] is None else f"{r['ms_ssim']:.4f}")) for k, r in rows.items()]
    canvas = Image.new("RGB", (len(panels) * (w + pad) + pad, h + cap + 2 * pad), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, (title, pic, line) in enumerate(panels):
        x = pad + i * (w + pad)
        canvas.paste(Image.fromarray(pic), (x, pad))
        draw.text((x, pad + h + 4), title, fill="black", font=font)
        draw.text((x, pad + h + 18), line, fill="black", font=font)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    write_atomic(out, buf.getvalue())
