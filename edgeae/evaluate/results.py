"""Rate-distortion results as plain dataclasses that round-trip through JSON (no numpy in the JSON)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeae.evaluate.metrics import mean_psnr
from edgeae.fsutil import write_atomic


@dataclass
class PerImage:
    """One value per evaluated image, in evaluation order."""

    bytes: list[int]
    psnr: list[float]  # inf for exact reconstructions (JSON: null)
    ssim: list[float]
    ms_ssim: list[float] | None = None  # None when the images are too small for MS-SSIM


@dataclass
class RDPoint:
    """One codec setting on one image set: the mean rate and the mean quality over the images.

    Rate is whole-file bytes for classical codecs (headers included) and whole-payload bytes for edgeae
    (its 23-24 byte header included): the same accounting on both sides.
    """

    codec: str  # "jpeg", "webp", "png", or "edgeae"
    curve: str  # the curve this point belongs to: "jpeg", "conv (fp32)", ...
    setting: str  # "q=50", or the bundle name
    n: int
    pixels: float  # H * W per image; the mean over images of several sizes (bpp = 8 * bytes / pixels)
    mean_bytes: float
    mean_psnr: float  # per-image PSNR averaged, exact images counted as PSNR_CAP_DB
    mean_ssim: float
    mean_ms_ssim: float | None
    exact: int  # images reconstructed exactly
    lossless: bool = False
    quality: int | None = None
    bundle: str | None = None  # bundle folder (edgeae)
    precision: str | None = None  # "fp32" / "int8" (edgeae)
    family: str | None = None  # manifest model family (edgeae)
    per_image: PerImage | None = None
    decoded: np.ndarray | None = field(default=None, repr=False, compare=False)  # first few images, not saved

    @property
    def mean_bpp(self) -> float:
        return 8.0 * self.mean_bytes / self.pixels

    @classmethod
    def build(cls, codec: str, curve: str, setting: str, sizes: list[int], psnrs: np.ndarray, ssims: np.ndarray,
              ms: np.ndarray | None, pixels: float, keep_per_image: bool = True, **kw: Any) -> RDPoint:
        per = PerImage([int(b) for b in sizes], [float(p) for p in psnrs], [float(s) for s in ssims],
                       None if ms is None else [float(v) for v in ms])
        return cls(codec=codec, curve=curve, setting=setting, n=len(sizes), pixels=pixels,
                   mean_bytes=float(np.mean(sizes)), mean_psnr=mean_psnr(psnrs), mean_ssim=float(np.mean(ssims)),
                   mean_ms_ssim=None if ms is None else float(np.mean(ms)), exact=int(np.isinf(psnrs).sum()),
                   per_image=per if keep_per_image else None, **kw)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "decoded"}
        d["mean_bpp"] = self.mean_bpp
        if self.per_image is not None:
            d["per_image"]["psnr"] = [None if math.isinf(p) else p for p in self.per_image.psnr]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RDPoint:
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if d.get("per_image") is not None:
            per = dict(d["per_image"])
            per["psnr"] = [math.inf if p is None else p for p in per["psnr"]]
            d["per_image"] = PerImage(**per)
        return cls(**d)


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    return write_atomic(path, json.dumps(data, indent=1, allow_nan=False) + "\n")
