"""Datasets by name, all offline: digits, photos, mnist, images, npy -> float32 NCHW arrays in [0, 1]."""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeae.errors import DataError

# Real files are small (MNIST train images are 47 MB raw); anything far larger is not a dataset we read.
MAX_FILE_BYTES = 2 << 30
MAX_IDX_ITEMS = 10_000_000
MAX_PATCH = 1024  # photos/images patch side (the codec speed target is 768x512)
# Image folders: bounds on what one folder may make us decode and hold (uint8) in memory.
MAX_FOLDER_IMAGES = 100_000
MAX_IMAGE_PIXELS = 40_000_000  # per image, checked from the header before decoding
MAX_FOLDER_BYTES = 4 << 30  # decoded uint8 pixels of one folder
MAX_CROPS_PER_IMAGE = 256
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class DataSpec:
    """How to rebuild a dataset: stored in a run's config.json so export can recalibrate on it."""

    name: str = "digits"
    data: str | None = None
    seed: int = 0
    val_fraction: float = 0.2
    patch: int = 32
    color: str = "gray"  # photos/images: "gray" or "rgb"
    limit: int | None = None
    val_data: str | None = None  # validate on this path (same loader) instead of a split of `data`
    crop: int | None = None  # images: whole images, `crop`x`crop` random crops drawn anew every epoch
    crops_per_image: int = 1  # random crops per training image per epoch
    val_crop: int | None = None  # crop mode: side of the validation images' centre crops (default: crop)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSpec:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class Dataset:
    """Train and validation images, float32 (N, C, H, W) in [0, 1]."""

    spec: DataSpec
    train: np.ndarray
    val: np.ndarray
    labels_train: np.ndarray | None = None
    labels_val: np.ndarray | None = None
    channel_order: str = "L"
    info: dict[str, Any] = field(default_factory=dict)
    # Crop mode: draws a fresh set of training crops per epoch; `train` holds one seeded crop of each image
    # (shape, export calibration), not a whole epoch's (16 crops of 280 photos at 256 would be 3.5 GB).
    crops: CropSampler | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train.shape[1:])  # type: ignore[return-value]


@dataclass
class CropSampler:
    """Random `size`x`size` crops (and horizontal flips) of whole uint8 (H, W, C) images, `per_image` each."""

    images: list[np.ndarray]
    size: int
    per_image: int = 1
    _on: tuple[Any, list[Any]] | None = field(default=None, repr=False, compare=False)  # (device, images there)

    def __len__(self) -> int:
        return len(self.images) * self.per_image

    def positions(self, rng: np.random.Generator) -> np.ndarray:
        """One epoch's crops as int64 (N, 4) rows (image, top, left, flip), image-major order: a function of
        the generator state only, so an epoch is redrawn exactly from the state saved at its start."""
        s = self.size
        out = np.empty((len(self), 4), np.int64)
        i = 0
        for k, img in enumerate(self.images):
            h, w = img.shape[:2]
            for _ in range(self.per_image):
                out[i] = k, int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1)), int(rng.integers(2))
                i += 1
        return out

    def gather(self, rows: np.ndarray, device: Any = "cpu") -> Any:
        """The crops `rows` name, float32 (N, C, size, size) in [0, 1] on `device`. The whole images are copied
        there once (a GPU then cuts every batch itself: the host only draws four integers per crop)."""
        import torch

        dev = torch.device(device)
        if self._on is None or self._on[0] != dev:
            self._on = (dev, [torch.from_numpy(np.array(im)).to(dev) for im in self.images])
        images, s = self._on[1], self.size
        tiles = []
        for k, y, x, flip in rows.tolist():
            tile = images[k][y : y + s, x : x + s]
            tiles.append(tile.flip(1) if flip else tile)
        return (torch.stack(tiles).permute(0, 3, 1, 2).float() * (1.0 / 255.0)).contiguous()

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """One epoch of crops, float32 (N, C, size, size) in [0, 1], image-major order."""
        return self.gather(self.positions(rng)).numpy()


# A loader returns (images, labels, channel order, split): split False = shuffled by seed, True = ordered
# (first part trains), an int = ordered with exactly that many validation images.
_LOADERS: dict[str, Callable[[DataSpec], tuple[np.ndarray, np.ndarray | None, str, bool | int]]] = {}


def _loader(name: str):
    def deco(fn):
        _LOADERS[name] = fn
        return fn

    return deco


def dataset_names() -> list[str]:
    return sorted(_LOADERS)


def load_dataset(spec: DataSpec | str = "digits", **overrides: Any) -> Dataset:
    """Load a dataset by name and split it deterministically by `spec.seed`."""
    if isinstance(spec, str):
        spec = DataSpec(name=spec, **overrides)
    elif overrides:
        spec = DataSpec.from_dict({**spec.to_dict(), **overrides})
    if spec.name not in _LOADERS:
        raise DataError(f"unknown dataset {spec.name!r}; choose one of {', '.join(dataset_names())}")
    if not 0.0 < spec.val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {spec.val_fraction}")
    if spec.crop is not None:
        return _crop_dataset(spec)
    if spec.val_data is not None:
        return _separate_val(spec)
    images, labels, order, ordered_split = _LOADERS[spec.name](spec)
    if spec.limit is not None:
        images = images[: spec.limit]
        labels = None if labels is None else labels[: spec.limit]
    n = len(images)
    # A loader may fix the validation count (photos: exactly the held-out photographs).
    fixed_val = ordered_split if type(ordered_split) is int else None
    n_val = fixed_val or max(1, int(round(n * spec.val_fraction)))
    if n - n_val < 1:
        raise DataError(f"dataset {spec.name!r} has only {n} images; need at least 2")
    # Ordered splits keep the source's convention (MNIST: first 8,000 train, last 2,000 evaluate;
    # photos: held-out photographs); the rest are shuffled by seed.
    idx = np.arange(n) if ordered_split else np.random.default_rng(spec.seed).permutation(n)
    tr, va = idx[: n - n_val], idx[n - n_val :]
    images = np.ascontiguousarray(images, dtype=np.float32)
    return Dataset(
        spec=spec,
        train=images[tr],
        val=images[va],
        labels_train=None if labels is None else labels[tr],
        labels_val=None if labels is None else labels[va],
        channel_order=order,
        info={"n_train": len(tr), "n_val": len(va)},
    )


def _separate_val(spec: DataSpec) -> Dataset:
    """Train on every image of `data`, validate on every image of `val_data` (same loader, same shape)."""
    if spec.name in ("digits", "photos"):
        raise DataError(f"--val-data needs a dataset read from a path (images, npy, mnist), not {spec.name!r}")
    train, labels_tr, order, _ = _LOADERS[spec.name](spec)
    val, labels_va, _, _ = _LOADERS[spec.name](DataSpec.from_dict({**spec.to_dict(), "data": spec.val_data,
                                                                       "val_data": None}))
    if spec.limit is not None:
        train, labels_tr = train[: spec.limit], None if labels_tr is None else labels_tr[: spec.limit]
    if train.shape[1:] != val.shape[1:]:
        raise DataError(f"--val-data images have shape {val.shape[1:]} but the training images {train.shape[1:]}")
    return Dataset(spec=spec, train=np.ascontiguousarray(train, np.float32), val=np.ascontiguousarray(val, np.float32),
                   labels_train=labels_tr, labels_val=labels_va, channel_order=order,
                   info={"n_train": len(train), "n_val": len(val)})


def _crop_dataset(spec: DataSpec) -> Dataset:
    """Whole images of a folder, random crops each epoch; validation = centre crops of `val_data` (or of a
    seeded 20% of the images when no --val-data is given)."""
    if spec.name != "images":
        raise DataError(f"--crop trains from whole images of a folder: use --dataset images, not {spec.name!r}")
    if spec.crop is None or not 8 <= spec.crop <= MAX_PATCH:
        raise DataError(f"crop size must be in [8, {MAX_PATCH}], got {spec.crop}")
    if not 1 <= spec.crops_per_image <= MAX_CROPS_PER_IMAGE:
        raise DataError(f"crops per image must be in [1, {MAX_CROPS_PER_IMAGE}], got {spec.crops_per_image}")
    mode = "L" if spec.color == "gray" else "RGB"
    images = read_image_folder(_require_path(spec, "a folder of PNG/JPEG images"), mode, min_side=spec.crop)
    if spec.limit is not None:
        images = images[: spec.limit]
    if spec.val_data is not None:
        val_images = read_image_folder(_require_path(spec, "a folder of PNG/JPEG images", spec.val_data), mode)
    else:
        if len(images) < 2:
            raise DataError(f"{spec.data} has only {len(images)} image; need at least 2 (or pass --val-data)")
        idx = np.random.default_rng(spec.seed).permutation(len(images))
        n_val = max(1, int(round(len(images) * spec.val_fraction)))
        val_images = [images[i] for i in idx[len(images) - n_val :]]
        images = [images[i] for i in idx[: len(images) - n_val]]
    side = spec.val_crop or spec.crop  # by default the model's input shape (what export validates on)
    if not 8 <= side <= MAX_PATCH:
        raise DataError(f"validation crop size must be in [8, {MAX_PATCH}], got {side}")
    val = np.stack([_centre_crop(_at_least(v, side), side) for v in val_images]).astype(np.float32) / 255.0
    sampler = CropSampler(images, spec.crop, spec.crops_per_image)
    first = CropSampler(images, spec.crop).draw(np.random.default_rng(spec.seed))  # one crop an image: light
    return Dataset(spec=spec, train=first, val=val, channel_order=mode,
                   crops=sampler, info={"n_train_images": len(images), "n_val": len(val), "val_crop": side})


def _centre_crop(img: np.ndarray, side: int) -> np.ndarray:
    h, w = img.shape[:2]
    y, x = (h - side) // 2, (w - side) // 2
    return np.ascontiguousarray(img[y : y + side, x : x + side].transpose(2, 0, 1))


def _at_least(img: np.ndarray, side: int) -> np.ndarray:
    """Upscale (bicubic) an (H, W, C) uint8 image whose shorter side is below `side` so that it is `side`."""
    from PIL import Image

    h, w, c = img.shape
    if min(h, w) >= side:
        return img
    k = side / min(h, w)
    size = (max(side, round(w * k)), max(side, round(h * k)))
    pil = Image.fromarray(img[..., 0] if c == 1 else img).resize(size, Image.Resampling.BICUBIC)
    return np.asarray(pil, np.uint8).reshape(size[1], size[0], c)


def image_files(folder: Path) -> list[Path]:
    """Image files under `folder` (recursive, sorted, hidden files left out: the runtime's one walker), at most
    MAX_FOLDER_IMAGES."""
    from edgeae.runtime.files import find_files

    files = [f.source for f in find_files([folder], IMAGE_SUFFIXES, skip=lambda _p, _why: None)]
    if not files:
        raise DataError(f"no PNG/JPEG images in {folder}")
    if len(files) > MAX_FOLDER_IMAGES:
        raise DataError(f"{folder} holds {len(files)} images; more than the {MAX_FOLDER_IMAGES} limit (split it)")
    return files


def read_image_folder(folder: Path, mode: str, min_side: int = 0) -> list[np.ndarray]:
    """Every image of a folder as uint8 (H, W, C), converted to `mode` ("L"/"RGB"); images whose shorter side
    is below `min_side` are upscaled to it. Sizes are checked from each header before decoding."""
    from PIL import Image, UnidentifiedImageError

    if not folder.is_dir():
        raise DataError(f"{folder} must be a folder of PNG/JPEG images")
    out, total = [], 0
    for f in image_files(folder):
        try:
            with Image.open(f) as opened:
                w, h = opened.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise DataError(f"{f} is {w}x{h}; larger than the {MAX_IMAGE_PIXELS} pixel limit per image")
                arr = np.asarray(opened.convert(mode), np.uint8).reshape(h, w, -1)
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot read image {f}: {exc}") from None
        arr = _at_least(arr, min_side) if min_side else arr
        total += arr.nbytes
        if total > MAX_FOLDER_BYTES:
            raise DataError(f"{folder} decodes to more than {MAX_FOLDER_BYTES >> 30} GiB of pixels; use fewer images")
        out.append(arr)
    return out


def _require_path(spec: DataSpec, what: str, raw: str | None = None) -> Path:
    raw = spec.data if raw is None else raw
    if not raw:
        raise DataError(f"dataset {spec.name!r} needs --data PATH ({what})")
    path = Path(raw).expanduser()
    if not path.exists():
        raise DataError(f"path {str(path)!r} does not exist; pass {what}")
    return path


@_loader("digits")
def _digits(spec: DataSpec):
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images.astype(np.float32) / 16.0)[:, None]
    return images, d.target.astype(np.int64), "L", False


# scikit-image's bundled photographs. `cat` is the same picture as `chelsea`, so it is left out.
_PHOTOS_TRAIN = ("astronaut", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "camera",
                 "coins", "moon", "clock", "brick", "grass", "gravel")
_PHOTOS_VAL = ("coffee", "chelsea")


def photo_names(split: str) -> tuple[str, ...]:
    return _PHOTOS_TRAIN if split == "train" else _PHOTOS_VAL


def load_photo(name: str, color: str) -> np.ndarray:
    """One bundled photograph as uint8 (H, W, C) with C = 1 (gray) or 3 (rgb)."""
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3].astype(np.float32)
    if color == "gray":
        img = (img @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _patches(img: np.ndarray, size: int, stride: int | None = None) -> np.ndarray:
    """(N, C, size, size) tiles of an (H, W, C) image, row-major; `stride` < size overlaps them."""
    stride = stride or size
    h, w, c = img.shape
    if h < size or w < size:
        return np.zeros((0, c, size, size), img.dtype)
    tiles = np.lib.stride_tricks.sliding_window_view(img, (size, size), axis=(0, 1))[::stride, ::stride]
    return np.ascontiguousarray(tiles.reshape(-1, c, size, size))


def photos_resized(height: int, width: int, color: str) -> tuple[np.ndarray, np.ndarray]:
    """Whole photographs resized (bicubic) to height x width: float32 (train, held-out) NCHW in [0, 1].

    For sizes the photographs cannot be cut into (an exporter calibrating a 768x512 codec graph)."""
    from PIL import Image

    def stack(names: tuple[str, ...]) -> np.ndarray:
        out = []
        for n in names:
            img = load_photo(n, color)
            pil = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img)
            arr = np.asarray(pil.resize((width, height), Image.Resampling.BICUBIC), np.float32) / 255.0
            out.append(arr.reshape(height, width, -1).transpose(2, 0, 1))
        return np.stack(out)

    return stack(_PHOTOS_TRAIN), stack(_PHOTOS_VAL)


@_loader("photos")
def _photos(spec: DataSpec):
    if spec.color not in ("gray", "rgb"):
        raise DataError(f"photos color must be 'gray' or 'rgb', got {spec.color!r}")
    if not 8 <= spec.patch <= MAX_PATCH:
        raise DataError(f"photos patch size must be in [8, {MAX_PATCH}], got {spec.patch}")
    # Training tiles overlap by half a patch (4x the patches from 12 photographs); held-out tiles do not.
    strides = {"train": max(1, spec.patch // 2), "val": spec.patch}
    parts = {s: [_patches(load_photo(n, spec.color), spec.patch, strides[s]) for n in photo_names(s)]
             for s in ("train", "val")}
    train, val = np.concatenate(parts["train"]), np.concatenate(parts["val"])
    if not len(val):
        raise DataError(f"photos patch size {spec.patch} is larger than every held-out photograph; use at most 300")
    # Held-out photos come last and form the whole validation split.
    images = np.concatenate([train, val]).astype(np.float32) / 255.0
    return images, None, "L" if spec.color == "gray" else "RGB", len(val)


def _read_bounded(path: Path) -> bytes:
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DataError(f"{path} is {size} bytes; larger than the {MAX_FILE_BYTES} byte limit")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise DataError(f"{path} decompresses to more than {MAX_FILE_BYTES} bytes")
    return data


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse an IDX file (MNIST's format), gzip or raw, with every size checked before allocating."""
    path = Path(path)
    data = _read_bounded(path)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic); is it an MNIST file?")
    ndim = data[3]
    if not 1 <= ndim <= 4 or len(data) < 4 + 4 * ndim:
        raise DataError(f"{path}: IDX header is truncated or has {ndim} dimensions")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    count = int(np.prod(dims, dtype=np.int64))
    if dims[0] > MAX_IDX_ITEMS or len(data) != 4 + 4 * ndim + count:
        raise DataError(f"{path}: IDX header says {dims} but the file holds {len(data) - 4 - 4 * ndim} bytes")
    return np.frombuffer(data, np.uint8, count, 4 + 4 * ndim).reshape(dims)


def _find(path: Path, stem: str) -> Path | None:
    for suffix in (".gz", ""):
        p = path / f"{stem}{suffix}"
        if p.exists():
            return p
    return None


@_loader("mnist")
def _mnist(spec: DataSpec):
    path = _require_path(spec, "an MNIST folder of IDX files (gz or raw) or an .npz")
    if path.is_file() and path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            key = "images" if "images" in z else ("x" if "x" in z else z.files[0])
            images = np.asarray(z[key])
            labels = np.asarray(z["labels"]) if "labels" in z else None
    elif path.is_dir():
        img = _find(path, "t10k-images-idx3-ubyte") or _find(path, "train-images-idx3-ubyte")
        if img is None:
            raise DataError(f"no *-images-idx3-ubyte[.gz] file in {path}; point --data at the MNIST folder")
        images = read_idx(img)
        lab = _find(path, img.name.split("-images")[0] + "-labels-idx1-ubyte")
        labels = read_idx(lab).astype(np.int64) if lab else None
    else:
        images, labels = read_idx(path), None
    images = _to_nchw(images, str(path))
    if images.max() > 1.0:
        images = images / 255.0
    return images, labels, "L", True


def _to_nchw(a: np.ndarray, where: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "uif":
        raise DataError(f"{where}: expected a numeric array, got dtype {a.dtype}")
    if a.ndim == 2:  # (N, F): flat vectors, square if possible
        side = int(round(np.sqrt(a.shape[1])))
        a = a.reshape(len(a), 1, side, side) if side * side == a.shape[1] else a[:, None, None, :]
    elif a.ndim == 3:
        a = a[:, None]
    elif a.ndim != 4:
        raise DataError(f"{where}: expected (N, C, H, W), (N, H, W) or (N, F); got shape {a.shape}")
    a = a.astype(np.float32)
    if a.dtype.kind == "f" and a.min() < 0:
        raise DataError(f"{where}: values must be in [0, 1] (floats) or [0, 255] (integers)")
    return a


@_loader("npy")
def _npy(spec: DataSpec):
    path = _require_path(spec, "a .npy array of shape (N, C, H, W), (N, H, W) or (N, F)")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise DataError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{path} is not a readable .npy array ({exc})") from None
    a = _to_nchw(a, str(path))
    if a.max() > 1.0:
        a = a / 255.0
    order = "RGB" if a.shape[1] == 3 else "L"
    return a, None, order, False


@_loader("images")
def _images(spec: DataSpec):
    from PIL import Image

    if not 8 <= spec.patch <= MAX_PATCH:
        raise DataError(f"images patch size must be in [8, {MAX_PATCH}], got {spec.patch}")
    path = _require_path(spec, "a folder of PNG/JPEG images")
    if not path.is_dir():
        raise DataError(f"--data {path} must be a folder of PNG/JPEG images")
    mode = "L" if spec.color == "gray" else "RGB"
    out = []
    for arr in read_image_folder(path, mode):
        # Small images are resized to the patch size; large ones are cut into patches.
        if min(arr.shape[:2]) < 2 * spec.patch:
            pil = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
            arr = np.asarray(pil.resize((spec.patch, spec.patch), Image.Resampling.BICUBIC), np.uint8)
            arr = arr.reshape(spec.patch, spec.patch, -1)
        out.append(_patches(arr, spec.patch))
    images = np.concatenate(out).astype(np.float32) / 255.0
    return images, None, mode, False
