"""Latent quantisation ranges and integer entropy tables, calibrated on training latents."""

from __future__ import annotations

from typing import Any

import numpy as np

PRECISION = 16  # entropy table rows sum to 2**16
UNIFORM_MIX = 0.01  # share of probability spread evenly, so symbols unseen in calibration stay cheap-ish


def channel_view(latents: np.ndarray, axis: int = 1) -> np.ndarray:
    """(N, C, ...) -> (C, N * ...): one row of samples per latent channel."""
    moved = np.moveaxis(latents, axis, 0)
    return moved.reshape(moved.shape[0], -1)


def calibrate_quantization(latents: np.ndarray, bits: int) -> dict[str, Any]:
    """Per-channel [min, max] -> 2**bits uniform levels (docs/MANIFEST.md)."""
    if not 1 <= bits <= 16:
        raise ValueError(f"latent bits must be in [1, 16], got {bits}")
    rows = channel_view(latents.astype(np.float64))
    lo, hi = rows.min(axis=1), rows.max(axis=1)
    levels = 2**bits
    # A channel that never varies still needs a positive step; its one value maps to symbol 0.
    step = np.where(hi - lo > 1e-12, (hi - lo) / (levels - 1), 1.0)
    return {"bits": bits, "levels": levels, "offset": lo.astype(np.float32).tolist(),
            "step": step.astype(np.float32).tolist()}


def frequencies_from_probabilities(probs: np.ndarray, precision: int = PRECISION) -> np.ndarray:
    """Rows of probabilities (zeros allowed) -> integer rows, every entry >= 1, each row summing exactly to
    2**precision. Each entry gets 1 + floor(p * (2**precision - levels)); the rounding remainder goes to the
    entries with the largest fractional parts (largest-remainder rounding, ties to the lower symbol), so every
    row is as close to its probabilities as integers allow. The one rounding rule of every table edgeae makes
    (calibrated histograms, refit rows, the codec's prior, the hyperprior's Gaussians)."""
    probs = np.asarray(probs, np.float64)
    total = 1 << precision
    c, levels = probs.shape
    if levels > total // 2:
        raise ValueError(f"{levels} levels do not fit a {precision}-bit table")
    probs = probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-300)
    scaled = probs * (total - levels)
    freq = 1 + np.floor(scaled).astype(np.int64)
    frac = scaled - np.floor(scaled)
    for row, f in zip(freq, frac, strict=True):
        short = total - int(row.sum())
        row[np.argsort(-f, kind="stable")[:short]] += 1
    assert (freq.sum(axis=1) == total).all() and (freq >= 1).all()
    return freq


def channel_counts(symbols: np.ndarray, levels: int, axis: int = 1) -> np.ndarray:
    """(C, levels) histograms of integer symbols in 0..levels-1, one row per latent channel."""
    return np.stack([np.bincount(r.astype(np.int64), minlength=levels)[:levels] for r in channel_view(symbols, axis)])


def histogram_tables(symbols: np.ndarray, levels: int, axis: int = 1, precision: int = PRECISION) -> dict[str, Any]:
    """Per-channel histograms of integer symbols, mixed with a little uniform mass, as integer tables."""
    counts = channel_counts(symbols, levels, axis).astype(np.float64)
    probs = (1 - UNIFORM_MIX) * counts / counts.sum(axis=1, keepdims=True) + UNIFORM_MIX / levels
    return {"coder": "range", "precision": precision, "frequencies": frequencies_from_probabilities(probs, precision).tolist()}


def cross_entropy_bits(symbols: np.ndarray, frequencies: np.ndarray, axis: int = 1, precision: int = PRECISION) -> float:
    """Ideal code length of `symbols` under the tables, in bits (what a perfect entropy coder would spend)."""
    rows = channel_view(symbols, axis).astype(np.int64)
    f = np.asarray(frequencies, np.float64)
    return float(-np.log2(np.take_along_axis(f, rows, axis=1) / (1 << precision)).sum())


REFIT_PSEUDO_COUNTS = 100.0  # the model's own row weighs as much as this many calibration symbols


def refit_rows(frequencies: Any, counts: Any, precision: int = PRECISION) -> list[list[int]]:
    """A learned model's integer tables refit to the symbols its encoder gives on the calibration data.

    Row k becomes (counts_k + B p_k) / (n_k + B), p_k the model's own row normalised and B =
    REFIT_PSEUDO_COUNTS: rows the calibration data rarely reaches stay the model's, well-used rows follow what
    the rounded latents really are (a density trained on noisy latents, or a Gaussian, misses the spike at 0
    and the tails of round(y)). Lengths, offsets and any escape entry are unchanged: counts_k has row k's
    length (escaped symbols counted in the escape entry). Measured: docs/HYPERPRIOR.md, "Refit tables"."""
    out = []
    for row, c in zip(frequencies, counts, strict=True):
        f = np.asarray(row, np.float64)
        c = np.asarray(c, np.float64)
        if c.shape != f.shape:
            raise ValueError(f"refit counts of shape {c.shape} for a table of {f.shape}")
        if not c.sum():  # nothing seen: the model's own row, exactly
            out.append([int(v) for v in row])
            continue
        p = (c + REFIT_PSEUDO_COUNTS * f / f.sum()) / (c.sum() + REFIT_PSEUDO_COUNTS)
        out.append(frequencies_from_probabilities(p[None, :], precision)[0].tolist())
    return out


def table_counts(table: np.ndarray, value: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """Per table k, the histogram of `value` (0-based within the row) over the symbols coded with table k;
    values outside 0..lengths[k]-2 count in the last entry (the escape). `table`, `value`: same shape."""
    t = np.asarray(table, np.int64).ravel()
    v = np.asarray(value, np.int64).ravel()
    lengths = np.asarray(lengths, np.int64)
    width = int(lengths.max())
    esc = lengths[t] - 1
    v = np.where((v >= 0) & (v < esc), v, esc)
    hist = np.bincount(t * width + v, minlength=len(lengths) * width).reshape(len(lengths), width)
    return [hist[k, : lengths[k]] for k in range(len(lengths))]
