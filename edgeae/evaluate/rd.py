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


def _open(bundle: Any) -> Any:
    from edgeae.runtime.bundle import Bundle

    return bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)


def _check_fits(bundle: Any, x: np.ndarray) -> None:
    """Images of another size are fine for a bundle that takes any size (manifest input.size_multiple > 0);
    a fixed-size bundle takes only its own; the channels must match either way."""
    spec = bundle.manifest.input
    c, h, w = spec.shape
    any_size = bool(getattr(spec, "size_multiple", 0))
    if x.shape[3] != c or (not any_size and x.shape[1:3] != (h, w)):
        want = f"{c}-channel images of any size" if any_size else f"{h}x{w}x{c} images"
        raise InputError(f"bundle {bundle.path} takes {want} but the evaluation images are "
                         f"{x.shape[1]}x{x.shape[2]}x{x.shape[3]}; evaluate it on images like those it was "
                         "trained for")


def size_groups(images: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """A batch, or a list of single uint8 images of any sizes -> [(indices, uint8 (n, H, W, C) batch)] per
    shape, in order of first appearance; the indices say where each image was in the input."""
    if isinstance(images, np.ndarray):
        x = to_uint8_images(images)
        return [(np.arange(len(x)), x)] if len(x) else []
    singles = []
    for a in images:
        a = np.asarray(a)
        if a.dtype != np.uint8 or a.ndim not in (2, 3):
            raise InputError(f"a list of images must hold uint8 (H, W) or (H, W, C) arrays, got {a.dtype} "
                             f"{a.shape}; pass a batch as one array")
        singles.append(as_nhwc(a, batch=False))
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, a in enumerate(singles):
        by_shape.setdefault(a.shape[1:], []).append(i)
    return [(np.asarray(idx), np.concatenate([singles[i] for i in idx])) for idx in by_shape.values()]


def eval_images(bundles: Sequence[Any], *, dataset: str | None = None, data: str | None = None,
                split: str = "val", test_data: Sequence[str | os.PathLike[str]] = (), seed: int = 0, patch: int = 32,
                color: str = "gray", limit: int | None = None, convert: bool = False) -> tuple[Any, dict[str, Any]]:
    """The images `edgeae eval` evaluates, and how they were chosen (for the report): a dataset's validation
    split (`split="val"`) or all of it (`"all"`), or every image file under `test_data` at its own size, read
    for the first bundle (`convert`: gray <-> RGB files converted instead of refused). Datasets need the
    [train] extra; image folders do not."""
    if (dataset is None) == (not test_data):
        raise InputError("give a dataset (--dataset) or image files / folders (--test-data), one of the two")
    if test_data:
        names, images = load_folder(test_data, _open(bundles[0]).manifest.input, limit, convert)
        shapes = {a.shape for a in images}
        info = {"name": "images", "data": [str(p) for p in test_data], "split": "all", "n": len(names),
                "limit": limit, "files": names}
        return (np.stack(images) if len(shapes) == 1 else images), info
    if split not in ("val", "all"):
        raise InputError(f"split must be val or all, got {split!r}")
    if dataset is None:
        raise InputError("give a dataset name or a test folder (--test-data DIR) to evaluate on")
    from edgeae.train.data import load_dataset

    ds = load_dataset(dataset, data=data, seed=seed, patch=patch, color=color)
    x = ds.val if split == "val" else np.concatenate([ds.train, ds.val])
    info = {"name": dataset, "data": data, "seed": seed, "split": split, "n_val": len(ds.val), "n": len(x),
            "limit": limit}
    if dataset in ("photos", "images"):
        info.update(patch=patch, color=color)
    return to_uint8_images(x[:limit] if limit else x), info


def load_folder(paths: Sequence[str | os.PathLike[str]], spec: Any, limit: int | None = None,
                convert: bool = False) -> tuple[list[str], list[np.ndarray]]:
    """Every image file under `paths` (files, folders walked recursively; the first `limit`) as uint8 (H, W, C),
    each at its own size, read as the runtime reads files for a bundle with input spec `spec` (a fixed-size
    bundle refuses other sizes; gray vs colour must match unless `convert`): (names, images)."""
    from edgeae.runtime.files import find_files
    from edgeae.runtime.images import IMAGE_SUFFIXES, ImageAdapter

    if spec.kind != "image":
        raise InputError("image files need an image bundle; this bundle takes float tensors")
    adapter = ImageAdapter(spec, convert=convert)
    names, images = [], []
    for f in find_files(paths, IMAGE_SUFFIXES)[:limit]:
        a = adapter.load(f.source)
        names.append(str(f.source))
        images.append(a if a.ndim == 3 else a[..., None])
    return names, images


def evaluate_bundle(bundle: Any, images: np.ndarray, precision: str = "fp32", label: str | None = None,
                    keep: int = 0, progress: Callable[[int], None] | None = None, threads: int | None = None,
                    keep_per_image: bool = True) -> RDPoint:
    """One RD point: every image encoded to its own payload and decoded alone, through the real runtime."""
    from edgeae.runtime.codec import Decoder, Encoder

    b = _open(bundle)
    groups = size_groups(images)
    for _, x in groups:
        _check_fits(b, x)
    enc, dec = Encoder(b, precision, threads=threads), Decoder(b, precision, threads=threads)
    family = str(b.manifest.model.get("family", "edgeae"))
    curve = f"{label or family} ({precision})"
    parts = []
    for order, x in groups:
        n, h, w, _ = x.shape
        sizes: list[int] = []
        decoded = np.empty_like(x)
        for i in range(0, n, ENCODE_CHUNK):
            for j, payload in enumerate(enc.encode_each(x[i : i + ENCODE_CHUNK]), start=i):
                sizes.append(len(payload))
                decoded[j] = dec.decode(payload)[0].reshape(h, w, -1)
                if progress:
                    progress(1)
        ms = ms_ssim(x, decoded) if ms_ssim_applies(h, w) else None
        parts.append((order, RDPoint.build("edgeae", curve, b.path.name, sizes, psnr(x, decoded), ssim(x, decoded),
                                           ms, h * w, True, bundle=str(b.path), precision=precision, family=family,
                                           decoded=decoded[:keep].copy() if keep else None)))
    return merge_points(parts, keep_per_image)


def merge_points(parts: Sequence[tuple[np.ndarray, RDPoint]], keep_per_image: bool = True) -> RDPoint:
    """One RD point from the same codec setting on several groups of images (one group per image size): the
    per-image values back in input order (`parts[i][0]` are group i's input positions), the means over every
    image, bits per pixel over every pixel. Decoded images are the first group's (a grid needs one size)."""
    from dataclasses import replace

    first = parts[0][1]
    if len(parts) == 1:
        return first if keep_per_image else replace(first, per_image=None)
    n = sum(len(order) for order, _ in parts)
    values: dict[str, list[Any]] = {k: [None] * n for k in ("bytes", "psnr", "ssim", "ms_ssim")}
    for order, p in parts:
        assert p.per_image is not None
        for k in values:
            got = getattr(p.per_image, k)
            for pos, v in zip(order, got if got is not None else [None] * len(order), strict=True):
                values[k][int(pos)] = v
    ms = None if any(v is None for v in values["ms_ssim"]) else np.asarray(values["ms_ssim"])
    pixels = sum(p.pixels * p.n for _, p in parts) / n  # mean pixels per image: bpp = all bits / all pixels
    kw = {k: getattr(first, k) for k in ("lossless", "quality", "bundle", "precision", "family")}
    return RDPoint.build(first.codec, first.curve, first.setting, values["bytes"], np.asarray(values["psnr"]),
                         np.asarray(values["ssim"]), ms, pixels, keep_per_image, decoded=first.decoded, **kw)


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
    image_shape: tuple[int, int, int]  # H, W, C of the first image (every image's, when they share one size)
    n_images: int
    dataset: dict[str, Any] = field(default_factory=dict)
    method: str = "pchip"
    comparisons: list[Comparison] = field(default_factory=list)
    equal_quality: list[EqualQuality] = field(default_factory=list)
    shapes: list[tuple[int, int, int]] = field(default_factory=list)  # every distinct (H, W, C), first seen first
    # The first images of the first size, as evaluated (uint8 NHWC), beside the points' decoded ones (not saved).
    originals: np.ndarray | None = field(default=None, repr=False, compare=False)

    def size_label(self) -> str:
        """"8x8" or "512x768 and 3 other sizes"."""
        h, w, _ = self.image_shape
        more = len(self.shapes) - 1
        return f"{h}x{w}" + (f" and {more} other size{'s' if more > 1 else ''}" if more > 0 else "")

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
                "image_shape": list(self.image_shape), "shapes": [list(v) for v in self.shapes or [self.image_shape]],
                "method": self.method,
                "points": [p.to_dict() for p in self.points],
                "comparisons": [c.to_dict() for c in self.comparisons],
                "equal_quality": [e.to_dict() for e in self.equal_quality],
                "winners": [{"psnr_from": a, "psnr_to": b, "curve": c} for a, b, c in self.winners()]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RDEvaluation:
        if d.get("schema") != SCHEMA:
            raise ValueError(f"not an edgeae RD result (schema {d.get('schema')!r})")
        ev = cls([RDPoint.from_dict(p) for p in d["points"]], tuple(d["image_shape"]), d["n_images"],
                 d.get("dataset", {}), d.get("method", "pchip"),
                 shapes=[tuple(v) for v in d.get("shapes", [d["image_shape"]])])
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
    groups = size_groups(images)
    if not groups:
        raise InputError("no images to evaluate")
    n_images = sum(len(order) for order, _ in groups)
    opened = [_open(b) for b in bundles]
    for b in opened:
        for _, x in groups:
            _check_fits(b, x)
    labels = list(labels) if labels is not None else [None] * len(opened)
    if len(labels) != len(opened):
        raise InputError(f"{len(labels)} labels for {len(opened)} bundles; give one label, or one per bundle")
    jobs = [(b, p, lab) for b, lab in zip(opened, labels, strict=True) for p in b.precisions
            if precisions is None or p in precisions]
    for b in opened:
        if not any(j[0] is b for j in jobs):
            raise InputError(f"bundle {b.path} has none of the precisions asked for ({', '.join(precisions or [])}); "
                             "it has " + ", ".join(b.precisions))
    codecs = tuple(codecs)
    qualities = tuple(qualities)
    total = n_images * (len(jobs) + len(settings(codecs, qualities)))
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
            points.append(evaluate_bundle(b, images, prec, lab, keep, step, threads, keep_per_image))
        if bar is not None:
            bar.update(task, description="classical codecs")
        per_group = [(order, evaluate_classical(x, codecs, qualities, keep, step, True)) for order, x in groups]
        for k in range(len(per_group[0][1])):
            points.append(merge_points([(order, pts[k]) for order, pts in per_group], keep_per_image))
    first = groups[0][1]
    ev = RDEvaluation(points, tuple(first.shape[1:]), n_images, dict(dataset or {}), method,
                      shapes=[tuple(x.shape[1:]) for _, x in groups])
    ev.originals = first[:keep].copy() if keep else None
    ev.compare()
    return ev


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
