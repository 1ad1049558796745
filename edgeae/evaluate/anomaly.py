"""Anomaly scores from reconstruction error (seed 001 §4.3), torch-free.

An autoencoder trained on normal images reconstructs them well and unfamiliar images worse, so the per-image
mean squared error (pixels on the [0, 1] scale, all channels) is the anomaly score. Two paths:

    mode="payload" (default): the real edge path, encode_each -> payload bytes -> decode, as deployed;
    mode="graphs": encoder graph -> decoder graph on float latents, no quantisation or entropy coding.

A threshold is a percentile of the scores of normal images (`calibrate`); `roc_auc` measures separation
(Mann-Whitney U with average ranks for ties; numpy only, no scikit-learn).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeae.errors import InputError

MODES = ("payload", "graphs")
CHUNK = 256
MAX_NPY_BYTES = 1 << 30  # a .npy of images to score; far larger is not something we load whole


class Scorer:
    """Reconstruction-error scores for one bundle; builds the onnxruntime sessions once."""

    def __init__(self, bundle: Any, mode: str = "payload", precision: str = "fp32", threads: int | None = None,
                 convert: bool = False):
        """`convert`: let Pillow convert image files of the other channel kind (gray <-> RGB)."""
        from edgeae.runtime.codec import Decoder, Encoder

        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.encoder = Encoder(bundle, precision, threads=threads, convert=convert)
        self.decoder = Decoder(self.encoder.bundle, precision, threads=threads)
        self.mode = mode
        from edgeae.runtime.images import ImageAdapter

        if not isinstance(self.encoder.images, ImageAdapter):
            raise InputError("anomaly scores are for image bundles; this bundle takes tensors")
        self.pixels01 = self.encoder.images.pixels01  # graph space -> pixels in [0, 1] (the manifest's inverse)

    def score(self, images: Any) -> np.ndarray:
        """uint8 / float [0, 1] images (any form the runtime takes) -> float64 MSE per image, shape (N,)."""
        x = self.encoder.preprocess(images)  # float32 (N, C, H, W), the graph input
        out = np.empty(len(x))
        for i in range(0, len(x), CHUNK):
            xs = x[i : i + CHUNK]
            unit = self.pixels01(xs)  # back to pixels in [0, 1]
            if self.mode == "payload":
                payloads = [self.encoder.pack([item]) for item in self.encoder.code(xs)]
                rec = np.concatenate([self.decoder.decode(p, as_float=True) for p in payloads])
            else:
                rec = self.pixels01(self.decoder.reconstruct(self.encoder.latents(xs)))
            out[i : i + CHUNK] = ((rec.astype(np.float64) - unit) ** 2).reshape(len(xs), -1).mean(axis=1)
        return out


def scores(bundle: Any, images: Any, mode: str = "payload", precision: str = "fp32") -> np.ndarray:
    return Scorer(bundle, mode, precision).score(images)


def calibrate(normal_scores: Sequence[float] | np.ndarray, percentile: float = 99.0) -> float:
    """The threshold: this percentile of the scores of normal images (linear interpolation)."""
    s = np.asarray(normal_scores, dtype=np.float64)
    if not s.size:
        raise InputError("no normal images to calibrate on")
    if not 0.0 <= percentile <= 100.0:
        raise InputError(f"percentile must be in 0..100, got {percentile}")
    return float(np.percentile(s, percentile))


def roc_auc(normal: Sequence[float] | np.ndarray, anomalous: Sequence[float] | np.ndarray) -> float:
    """P(score of a random anomalous image > score of a random normal one), ties counting 1/2."""
    a, b = np.asarray(normal, dtype=np.float64).ravel(), np.asarray(anomalous, dtype=np.float64).ravel()
    if not a.size or not b.size:
        raise ValueError("roc_auc needs at least one normal and one anomalous score")
    allv = np.concatenate([a, b])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    # average ranks (1-based) over runs of equal values
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_v)) + 1]
    ends = np.r_[starts[1:], len(allv)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + 1 + e) / 2.0
    u = ranks[len(a):].sum() - len(b) * (len(b) + 1) / 2.0
    return float(u / (len(a) * len(b)))


@dataclass
class ScoreReport:
    names: list[str]
    scores: list[float]
    threshold: float | None
    percentile: float | None = None
    calibration_images: int | None = None
    mode: str = "payload"
    precision: str = "fp32"

    @property
    def flags(self) -> list[bool | None]:
        return [None if self.threshold is None else s > self.threshold for s in self.scores]

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "precision": self.precision, "threshold": self.threshold,
                "percentile": self.percentile, "calibration_images": self.calibration_images,
                "images": [{"name": n, "score": s, "anomalous": f}
                           for n, s, f in zip(self.names, self.scores, self.flags, strict=True)]}


def load_images(paths: Sequence[str | os.PathLike[str]], scorer: Scorer) -> tuple[list[str], np.ndarray]:
    """Image files, folders walked recursively (sorted), or .npy arrays -> (names, uint8 or float batch)."""
    from edgeae.runtime.files import find_files
    from edgeae.runtime.images import IMAGE_SUFFIXES

    names, arrays = [], []
    for found in find_files(paths, IMAGE_SUFFIXES | {".npy"}):
        f = found.source
        if f.suffix.lower() == ".npy":
            if f.stat().st_size > MAX_NPY_BYTES:
                raise InputError(f"{f} is larger than {MAX_NPY_BYTES >> 20} MiB; score it in parts")
            try:
                a = np.load(f, allow_pickle=False)
            except ValueError as exc:
                raise InputError(f"cannot read {f} as a .npy array: {exc}") from None
            batch = scorer.encoder.preprocess(a)
            names += [f"{f}[{i}]" for i in range(len(batch))]
            arrays.append(batch)
        else:
            names.append(str(f))
            arrays.append(scorer.encoder.preprocess(str(f)))
    if not arrays:
        raise InputError("no images given")
    x = np.concatenate(arrays)
    # preprocess gave graph input; hand back [0, 1] floats, which preprocess maps the same way again
    return names, scorer.pixels01(x)


def score_inputs(bundle: Any, inputs: Sequence[str | os.PathLike[str]], *, threshold: float | None = None,
                 calibrate_with: Sequence[str | os.PathLike[str]] = (), percentile: float = 99.0,
                 mode: str = "payload", precision: str = "fp32", threads: int | None = None,
                 convert: bool = False) -> ScoreReport:
    """`edgeae score`: scores of the images under `inputs` (files, folders, .npy), flagged against `threshold`,
    or against the `percentile` of the scores of the normal images under `calibrate_with`. `convert`: let
    Pillow convert image files of the other channel kind (gray <-> RGB) instead of refusing them."""
    if threshold is not None and calibrate_with:
        raise InputError("give a threshold or normal images to calibrate one on, not both")
    scorer = Scorer(bundle, mode, precision, threads, convert=convert)
    n_cal = None
    if calibrate_with:
        _, normal = load_images(calibrate_with, scorer)
        threshold, n_cal = calibrate(scorer.score(normal), percentile), len(normal)
    names, images = load_images(inputs, scorer)
    return ScoreReport(names, [float(v) for v in scorer.score(images)], threshold,
                       percentile if calibrate_with else None, n_cal, mode, precision)
