"""Rate-distortion evaluation of edgeae bundles against JPEG / WebP / PNG on the same uint8 images.

For every image: the REAL runtime path, one payload per image (`Encoder.encode_each`), each payload decoded
alone (`Decoder.decode`), so the rate is whole payloads, header included. fp32 always, int8 too when the
bundle ships int8 graphs (int8 encoder + int8 decoder). Each bundle x precision gives one RD point (mean
bytes, mean per-image PSNR); bundles of one family (manifest `model.family`, or a label) form a curve.
Torch-free: numpy, onnxruntime, Pillow (constriction if installed); rich only for the progress bar if installed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeae.errors import InputError
from edgeae.evaluate import bdrate
from edgeae.evaluate.classical import CODECS, DEFAULT_QUALITIES, LOSSY, evaluate_classical, settings
from edgeae.evaluate.metrics import as_nhwc, ms_ssim, ms_ssim_applies, psnr, ssim
from edgeae.evaluate.results import RDPoint, write_json
from edgeae.fsutil import read_json_bounded

SCHEMA = "edgeae.rd"
MAX_JSON_BYTES = 256 << 20
ENCODE_CHUNK = 256  # images per encoder graph run


def to_uint8_images(x: np.ndarray) -> np.ndarray:
    """A batch -> uint8 (N, H, W, C). uint8 batches may be (N, H, W) gray or (N, H, W, C); float32 datasets
    (N, C, H, W) in [0, 1] are rounded to uint8, which is what a device camera hands over."""
    a = np.asarray(x)
    if a.dtype == np.uint8:
        if a.ndim not in (3, 4):
            raise InputError(f"a uint8 batch must be (N, H, W) or (N, H, W, C), got shape {a.shape}")
        return as_nhwc(a, batch=True)
    if a.ndim != 4:
        raise InputError(f"float images must be (N, C, H, W), got shape {a.shape}")
    return np.ascontiguousarray(np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(0, 2, 3, 1))


def bundle_precisions(bundle: Any) -> list[str]:
    g = bundle.manifest.graphs
    both = g["encoder"].int8_file is not None and g["decoder"].int8_file is not None
    return ["fp32", "int8"] if both else ["fp32"]


def _open(bundle: Any) -> Any:
    from edgeae.runtime.bundle import Bundle

    return bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)


def _check_fits(bundle: Any, x: np.ndarray) -> None:
    c, h, w = bundle.manifest.input.shape
    if x.shape[1:] != (h, w, c):
        raise InputError(f"bundle {bundle.path} takes {h}x{w}x{c} images but the evaluation images are "
                         f"{x.shape[1]}x{x.shape[2]}x{x.shape[3]}; evaluate it on the dataset it was trained for")


def evaluate_bundle(bundle: Any, images: np.ndarray, precision: str = "fp32", label: str | None = None,
                    keep: int = 0, progress: Callable[[int], None] | None = None, threads: int | None = None,
                    keep_per_image: bool = True) -> RDPoint:
    """One RD point: every image encoded to its own payload and decoded alone, through the real runtime."""
    from edgeae.runtime.codec import Decoder, Encoder

    b = _open(bundle)
    x = to_uint8_images(images)
    _check_fits(b, x)
    enc, dec = Encoder(b, precision, threads=threads), Decoder(b, precision, threads=threads)
    n, h, w, _ = x.shape
    sizes: list[int] = []
    decoded = np.empty_like(x)
    for i in range(0, n, ENCODE_CHUNK):
        for j, payload in enumerate(enc.encode_each(x[i : i + ENCODE_CHUNK]), start=i):
            sizes.append(len(payload))
            decoded[j] = dec.decode(payload)[0].reshape(h, w, -1)
            if progress:
                progress(1)
    family = str(b.manifest.model.get("family", "edgeae"))
    curve = f"{label or family} ({precision})"
    ms = ms_ssim(x, decoded) if ms_ssim_applies(h, w) else None
    return RDPoint.build("edgeae", curve, b.path.name, sizes, psnr(x, decoded), ssim(x, decoded), ms, h * w,
                         keep_per_image, bundle=str(b.path), precision=precision, family=family,
                         decoded=decoded[:keep].copy() if keep else None)


@dataclass
class Comparison:
    """One edgeae curve against one classical codec: BD-rate and BD-PSNR, ref = the classical codec."""

    curve: str
    codec: str
    bd_rate: bdrate.BDResult
    bd_psnr: bdrate.BDResult

    def to_dict(self) -> dict[str, Any]:
        return {"curve": self.curve, "codec": self.codec, "bd_rate": self.bd_rate.to_dict(),
                "bd_psnr": self.bd_psnr.to_dict()}


@dataclass
class EqualQuality:
    """One edgeae point against a classical curve at the same mean PSNR (works with a single bundle)."""

    curve: str
    setting: str
    codec: str
    psnr: float
    edgeae_bytes: float
    codec_bytes: float | None  # None: the point's PSNR is outside the codec's sweep

    @property
    def ratio(self) -> float | None:
        return None if self.codec_bytes is None else self.edgeae_bytes / self.codec_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ratio": self.ratio}


@dataclass
class RDEvaluation:
    """Everything `edgeae eval` measures; JSON via to_dict / save, back via from_dict."""

    points: list[RDPoint]
    image_shape: tuple[int, int, int]  # H, W, C
    n_images: int
    dataset: dict[str, Any] = field(default_factory=dict)
    method: str = "pchip"
    comparisons: list[Comparison] = field(default_factory=list)
    equal_quality: list[EqualQuality] = field(default_factory=list)

    def curves(self, codec: str | None = None) -> dict[str, list[RDPoint]]:
        """Curve name -> its points sorted by rate; `codec` filters ("edgeae", "jpeg", ...)."""
        out: dict[str, list[RDPoint]] = {}
        for p in self.points:
            if codec is None or p.codec == codec:
                out.setdefault(p.curve, []).append(p)
        return {k: sorted(v, key=lambda p: p.mean_bytes) for k, v in out.items()}

    def compare(self) -> None:
        """Fill comparisons (BD per edgeae curve x lossy codec) and equal_quality (per edgeae point)."""
        classical = {c: pts for c, pts in self.curves().items() if c in LOSSY}
        self.comparisons, self.equal_quality = [], []
        for name, pts in self.curves("edgeae").items():
            r, q = [p.mean_bytes for p in pts], [p.mean_psnr for p in pts]
            for codec, ref in classical.items():
                rr, rq = [p.mean_bytes for p in ref], [p.mean_psnr for p in ref]
                self.comparisons.append(Comparison(name, codec, bdrate.bd_rate(rr, rq, r, q, self.method),
                                                   bdrate.bd_psnr(rr, rq, r, q, self.method)))
                for p in pts:
                    self.equal_quality.append(EqualQuality(name, p.setting, codec, p.mean_psnr, p.mean_bytes,
                                                           bdrate.rate_at(rr, rq, p.mean_psnr, self.method)))

    def winners(self, steps: int = 200) -> list[tuple[float, float, str]]:
        """PSNR ranges and the lossy curve needing the fewest bytes there: [(lo dB, hi dB, curve), ...]."""
        curves = {k: v for k, v in self.curves().items() if k in LOSSY or v[0].codec == "edgeae"}
        if not curves:
            return []
        lo = min(p.mean_psnr for v in curves.values() for p in v)
        hi = max(p.mean_psnr for v in curves.values() for p in v)
        out: list[tuple[float, float, str]] = []
        for level in np.linspace(lo, hi, steps):
            best, best_rate = None, np.inf
            for name, pts in curves.items():
                if len(pts) == 1:
                    rate = pts[0].mean_bytes if abs(pts[0].mean_psnr - level) < 1e-9 else None
                else:
                    rate = bdrate.rate_at([p.mean_bytes for p in pts], [p.mean_psnr for p in pts], level,
                                          self.method)
                if rate is not None and rate < best_rate:
                    best, best_rate = name, rate
            if best is None:
                continue
            if out and out[-1][2] == best:
                out[-1] = (out[-1][0], float(level), best)
            else:
                out.append((float(level), float(level), best))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "version": 1, "dataset": self.dataset, "n_images": self.n_images,
                "image_shape": list(self.image_shape), "method": self.method,
                "points": [p.to_dict() for p in self.points],
                "comparisons": [c.to_dict() for c in self.comparisons],
                "equal_quality": [e.to_dict() for e in self.equal_quality],
                "winners": [{"psnr_from": a, "psnr_to": b, "curve": c} for a, b, c in self.winners()]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RDEvaluation:
        if d.get("schema") != SCHEMA:
            raise ValueError(f"not an edgeae RD result (schema {d.get('schema')!r})")
        ev = cls([RDPoint.from_dict(p) for p in d["points"]], tuple(d["image_shape"]), d["n_images"],
                 d.get("dataset", {}), d.get("method", "pchip"))
        ev.compare()
        return ev

    def save(self, path: str | os.PathLike[str]) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RDEvaluation:
        """Read an rd.json written by `save` (size-bounded)."""
        p = Path(path)
        data = read_json_bounded(p, MAX_JSON_BYTES, InputError, hint="not an edgeae RD result")
        try:
            return cls.from_dict(data)
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{p} is not a readable edgeae RD result: {exc}") from None


def _progress_bar(total: int, enabled: bool):
    """A rich progress bar over the evaluation, or a no-op when disabled or rich is not installed."""
    if enabled:
        try:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TimeRemainingColumn(), transient=True)
            return bar, bar.add_task("evaluate", total=total)
        except ImportError:
            pass
    return None, None


def evaluate(bundles: Sequence[Any], images: np.ndarray, codecs: Iterable[str] = CODECS,
             qualities: Iterable[int] = DEFAULT_QUALITIES, labels: Sequence[str | None] | None = None,
             precisions: Sequence[str] | None = None, progress: bool = True, keep: int = 0,
             dataset: dict[str, Any] | None = None, method: str = "pchip", threads: int | None = None,
             keep_per_image: bool = True) -> RDEvaluation:
    """Bundles (folders or Bundle) and classical codecs on the same uint8 images (N, H, W) / (N, H, W, C), or
    float (N, C, H, W) in [0, 1]. `labels[i]` names bundle i's curve (default: its model family); `precisions`
    restricts to fp32 / int8 (default: every precision a bundle has)."""
    x = to_uint8_images(images)
    if not len(x):
        raise InputError("no images to evaluate")
    opened = [_open(b) for b in bundles]
    for b in opened:
        _check_fits(b, x)
    labels = list(labels) if labels is not None else [None] * len(opened)
    if len(labels) != len(opened):
        raise InputError(f"{len(labels)} labels for {len(opened)} bundles; give one label, or one per bundle")
    jobs = [(b, p, lab) for b, lab in zip(opened, labels, strict=True) for p in bundle_precisions(b)
            if precisions is None or p in precisions]
    for b in opened:
        if not any(j[0] is b for j in jobs):
            raise InputError(f"bundle {b.path} has none of the precisions asked for ({', '.join(precisions or [])}); "
                             "it has " + ", ".join(bundle_precisions(b)))
    codecs = tuple(codecs)
    qualities = tuple(qualities)
    total = len(x) * (len(jobs) + len(settings(codecs, qualities)))
    bar, task = _progress_bar(total, progress)

    def step(k: int, what: str = "") -> None:
        if bar is not None:
            bar.update(task, advance=k)

    points: list[RDPoint] = []
    ctx = bar if bar is not None else _Null()
    with ctx:
        for b, prec, lab in jobs:
            if bar is not None:
                bar.update(task, description=f"{b.manifest.name} {prec}")
            points.append(evaluate_bundle(b, x, prec, lab, keep, step, threads, keep_per_image))
        if bar is not None:
            bar.update(task, description="classical codecs")
        points += evaluate_classical(x, codecs, qualities, keep, step, keep_per_image)
    ev = RDEvaluation(points, tuple(x.shape[1:]), len(x), dict(dataset or {}), method)
    ev.compare()
    return ev


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
