"""Image quality on the uint8 scale (peak 255), numpy only: PSNR, SSIM (Wang et al. 2004), MS-SSIM (Wang 2003).

Images are uint8 (H, W), (H, W, C), or batches (N, H, W) / (N, H, W, C) (gray batches: pass `batch=True`
or a 4-D array). Colour images are scored per channel and averaged, as scikit-image does with
`channel_axis=-1`.

SSIM follows the reference implementation (ssim_index.m): an 11x11 Gaussian window, sigma 1.5, 'valid'
filtering (no padding), K1 = 0.01, K2 = 0.03, population (not sample) covariances. This equals
`skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=255)`, which tests/test_evaluate.py checks. Images smaller than 11 pixels on a side (8x8 digits)
use the largest odd window that fits, same sigma: scikit-image refuses such images; we say so in reports.

MS-SSIM: 5 scales with the standard weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), 2x2 average
downsampling (odd edges cropped), contrast-structure terms clipped at 0 (as pytorch-msssim does). It needs
the coarsest scale to hold a full 11x11 window, i.e. a smallest side >= 176 pixels; for smaller images
`ms_ssim` returns None.
"""

from __future__ import annotations

import math

import numpy as np

PEAK = 255.0
K1, K2 = 0.01, 0.03
SIGMA = 1.5
WINDOW = 11
MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_MIN_SIDE = WINDOW * 2 ** (len(MS_WEIGHTS) - 1)  # 176: the 5th scale (1/16) still holds an 11x11 window
PSNR_CAP_DB = 100.0  # averages cap exact reconstructions (PSNR = inf) here; per-image values stay inf


def as_nhwc(images: np.ndarray, batch: bool | None = None) -> np.ndarray:
    """uint8 images -> (N, H, W, C). `batch`: whether a 3-D array is (N, H, W) gray rather than (H, W, C)."""
    a = np.asarray(images)
    if a.ndim == 2:
        return a[None, :, :, None]
    if a.ndim == 3:
        if batch is None:
            batch = a.shape[-1] not in (1, 3, 4)
        return a[:, :, :, None] if batch else a[None]
    if a.ndim == 4:
        return a
    raise ValueError(f"images must be (H, W), (H, W, C), (N, H, W) or (N, H, W, C); got shape {a.shape}")


def _pair(a: np.ndarray, b: np.ndarray, batch: bool | None) -> tuple[np.ndarray, np.ndarray]:
    x, y = as_nhwc(a, batch), as_nhwc(b, batch)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {x.shape} vs {y.shape}")
    return x.astype(np.float64), y.astype(np.float64)


def mse(a: np.ndarray, b: np.ndarray, batch: bool | None = None) -> np.ndarray:
    """Per-image mean squared error on the 0..255 scale, shape (N,)."""
    x, y = _pair(a, b, batch)
    return ((x - y) ** 2).reshape(len(x), -1).mean(axis=1)


def psnr(a: np.ndarray, b: np.ndarray, batch: bool | None = None) -> np.ndarray:
    """Per-image PSNR in dB (peak 255), shape (N,); inf where the images are identical."""
    err = mse(a, b, batch)
    with np.errstate(divide="ignore"):
        return np.where(err > 0, 10.0 * np.log10(PEAK**2 / np.maximum(err, 1e-300)), np.inf)


def mean_psnr(values: np.ndarray | list[float]) -> float:
    """Mean of per-image PSNRs with exact images (inf) counted as PSNR_CAP_DB, so one exact image does not
    make a codec's average infinite."""
    v = np.minimum(np.asarray(values, dtype=np.float64), PSNR_CAP_DB)
    return float(v.mean()) if v.size else math.nan


def gaussian_window(size: int = WINDOW, sigma: float = SIGMA) -> np.ndarray:
    r = (size - 1) / 2.0
    g = np.exp(-((np.arange(size) - r) ** 2) / (2.0 * sigma * sigma))
    return g / g.sum()


def window_size(h: int, w: int) -> int:
    """11, or the largest odd size that fits a smaller image."""
    side = min(h, w, WINDOW)
    return side if side % 2 else side - 1


def _filter(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """'valid' separable filtering of (..., H, W) with the 1-D window g on both axes."""
    k = len(g)
    v = np.lib.stride_tricks.sliding_window_view(x, k, axis=-1) @ g  # (..., H, W-k+1)
    return np.lib.stride_tricks.sliding_window_view(v, k, axis=-2) @ g  # (..., H-k+1, W-k+1)


def _ssim_cs(x: np.ndarray, y: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean SSIM and mean contrast-structure term per (N, C) for float64 (N, C, H, W)."""
    c1, c2 = (K1 * PEAK) ** 2, (K2 * PEAK) ** 2
    mx, my = _filter(x, g), _filter(y, g)
    vx = _filter(x * x, g) - mx * mx
    vy = _filter(y * y, g) - my * my
    cxy = _filter(x * y, g) - mx * my
    cs = (2.0 * cxy + c2) / (vx + vy + c2)
    lum = (2.0 * mx * my + c1) / (mx * mx + my * my + c1)
    return (lum * cs).mean(axis=(-2, -1)), cs.mean(axis=(-2, -1))


def ssim(a: np.ndarray, b: np.ndarray, batch: bool | None = None, chunk: int = 256) -> np.ndarray:
    """Per-image SSIM, shape (N,); colour images average their channels."""
    x, y = _pair(a, b, batch)
    g = gaussian_window(window_size(*x.shape[1:3]))
    out = []
    for i in range(0, len(x), chunk):  # bounded memory: 5 filtered float64 maps per chunk
        xs = x[i : i + chunk].transpose(0, 3, 1, 2)
        ys = y[i : i + chunk].transpose(0, 3, 1, 2)
        out.append(_ssim_cs(xs, ys, g)[0].mean(axis=1))
    return np.concatenate(out) if out else np.zeros(0)


def _pool2(x: np.ndarray) -> np.ndarray:
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = x[..., :h, :w]
    return 0.25 * (x[..., 0::2, 0::2] + x[..., 1::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 1::2])


def ms_ssim_applies(h: int, w: int) -> bool:
    return min(h, w) >= MS_MIN_SIDE


def ms_ssim(a: np.ndarray, b: np.ndarray, batch: bool | None = None) -> np.ndarray | None:
    """Per-image MS-SSIM, shape (N,), or None when the images are smaller than 176 pixels on a side."""
    x, y = _pair(a, b, batch)
    if not ms_ssim_applies(*x.shape[1:3]):
        return None
    g = gaussian_window()
    out = np.empty(len(x))
    for i in range(len(x)):  # one image at a time: large images, bounded memory
        xs, ys = x[i : i + 1].transpose(0, 3, 1, 2), y[i : i + 1].transpose(0, 3, 1, 2)
        value = np.ones(xs.shape[1])
        for level, weight in enumerate(MS_WEIGHTS):
            s, cs = _ssim_cs(xs, ys, g)
            last = level == len(MS_WEIGHTS) - 1
            value = value * np.maximum(s[0] if last else cs[0], 0.0) ** weight
            if not last:
                xs, ys = _pool2(xs), _pool2(ys)
        out[i] = value.mean()
    return out
