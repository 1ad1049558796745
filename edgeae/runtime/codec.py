"""Encoder / Decoder: the whole pipeline, image -> payload bytes -> image, with each step callable alone.

    images -> ImageAdapter -> pad to the size multiple -> encoder graph -> entropy model -> payload.pack -> bytes
    bytes -> payload.parse (+ fingerprint) -> entropy model -> decoder graph -> crop -> images

The entropy model (edgeae/runtime/entropy_models/, chosen by the manifest's `entropy.model`) turns float
latents into each item's coded parts and back, running any extra graph it needs (the hyperprior's
`hyper_encoder` / `hyper_decoder`) through this module's sessions.

Any image size (bundles with `input.size_multiple` > 0): each image is padded at the bottom and right by
edge replication to the next multiple, the graphs run at the padded size, the payload carries the original
height and width, and the decoder crops. A batch of mixed sizes is grouped by padded size: one graph run per
padded size (and per chunk of at most GRAPH_PIXELS pixels), items stay in input order in the payload.
Bundles of a fixed size (dense models) take exactly that size, as before.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from edgeae import zoo
from edgeae.errors import BundleError, CorruptStream, FingerprintMismatch, InputError
from edgeae.runtime import payload as wire
from edgeae.runtime.bundle import Bundle
from edgeae.runtime.entropy_models import EntropyModel, model_for
from edgeae.runtime.images import input_adapter
from edgeae.runtime.session import make_session
from edgeae.runtime.tiles import plan, run_tiled

DECODE_BATCH = 256  # a graph runs on at most this many items at once, whatever the payload holds
GRAPH_PIXELS = 1 << 22  # ... and on at most this many (padded) pixels at once (with tile_pixels=0)
# A larger image runs on tiles of at most this many image pixels where its graph is local (manifest `halo`,
# edgeae.runtime.tiles): the encoder's input per run, the decoder's output per run (a batch of smaller images
# runs in chunks of at most this many pixels, at least one image each). Photo zoo, one 1920x1080
# photograph, peak RSS: int8 encode 650 -> 293 MB, decode 918 -> ~500 MB; the same bytes, and no slower.
TILE_PIXELS = 1 << 19


class _Graph:
    """One onnxruntime session with its manifest entry: x -> {output name: array}."""

    def __init__(self, bundle: Bundle, role: str, precision: str, device: Any, threads: int | None,
                 arena: bool = True) -> None:
        entry = bundle.manifest.graphs.get(role)
        if entry is None:
            raise BundleError(f"bundle {bundle.path} has no {role} graph, which its entropy model needs; "
                              "re-export the bundle")
        if role not in ("encoder", "decoder") and entry.int8_file is None:
            precision = "fp32"  # extra graphs without an int8 variant (the integer hyper-decoder) run as they are
        self.role = role
        self.path = bundle.graph_path(role, precision)
        # built from the bytes verified now (sha256 + fingerprint digest), never from the path re-read later
        self.session = make_session(bundle.graph_bytes(role, precision), profile=device, threads=threads, arena=arena)
        inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [entry.input] or entry.output not in self.outputs:
            raise BundleError(f"{bundle.path}: the {role} graph has inputs {inputs} / outputs {self.outputs} but "
                              f"the manifest names {entry.input!r} -> {entry.output!r}; re-export the bundle")
        self.input, self.output = entry.input, entry.output
        self.halo = entry.halo

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.session.run(self.outputs, {self.input: x}), strict=True))

    def main(self, x: np.ndarray) -> np.ndarray:
        """The manifest's output alone."""
        return self.session.run([self.output], {self.input: x})[0]

    def local(self, x: np.ndarray, unit: int, ratio: Fraction, max_cells: int) -> np.ndarray:
        """`main` on (N, C, H, W), item by item on tiles of at most max_cells input cells when H x W exceeds it
        and the graph has a halo (else whole)."""
        h, w = x.shape[-2:]
        if self.halo is None or max_cells <= 0 or h * w <= max_cells:
            return self.main(x)
        tiles = plan(h, w, unit, self.halo, max_cells)
        return np.concatenate([run_tiled(self.main, x[i:i + 1], tiles, ratio) for i in range(len(x))])


class _Codec:
    """What both sides share: the verified bundle, the graph sessions, the entropy model, the geometry."""

    role = ""
    # onnxruntime's CPU memory arena keeps the high-water mark of every run it has seen: off on the device
    # (a 1920x1080 encode peaks at 265 MB instead of 380), on for the decoding server (~15% faster decodes)
    arena = True

    tile_pixels = TILE_PIXELS

    def __init__(self, bundle: Bundle | str | os.PathLike[str], precision: str = "fp32", device: Any = None,
                 threads: int | None = None, tile_pixels: int | None = None) -> None:
        """`bundle`: a Bundle or its folder; `device`: a device profile (name, TOML path or DeviceProfile);
        `threads`: onnxruntime intra-op threads (overrides the profile's); `tile_pixels`: image pixels one
        graph run covers at most on a bundle whose graph is local (0: always whole; default TILE_PIXELS)."""
        if tile_pixels is not None:
            if isinstance(tile_pixels, bool) or not isinstance(tile_pixels, int) or tile_pixels < 0:
                raise InputError(f"tile_pixels must be a whole number of pixels >= 0, not {tile_pixels!r}")
            self.tile_pixels = tile_pixels
        self.named_quality = 0  # a zoo name's operating point of a multi-quality bundle ("photo:3")
        if not isinstance(bundle, Bundle) and zoo.is_name(bundle):
            bundle, self.named_quality = zoo.locate(str(bundle))
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle, partial=True)
        m = self.bundle.manifest
        self.manifest = m
        self.precision = precision
        self._options = (device, threads)
        self._graphs: dict[str, _Graph] = {}
        self.graph = self._graph(self.role)
        self.session = self.graph.session
        self.entropy: EntropyModel = model_for(m, self._graph)
        self.fingerprint = self.bundle.fingerprint_prefix
        self.latent_shape = m.latent.shape  # at the reference (export) size
        self.bits = m.latent.quantization.bits
        self.coder_id = wire.CODER_IDS[m.entropy.coder]
        self.model_id = self.entropy.model_id
        self.images = input_adapter(m.input)  # user input <-> graph space (the manifest's normalisation)
        self.size_multiple = m.input.size_multiple
        self.stride = m.latent.stride
        self.any_size = self.size_multiple > 0
        shape = m.input.shape
        # the (height, width) a payload carries for a fixed-size input: its last two axes, 1 for a missing one
        self.fixed_size: tuple[int, int] = (1, 1) if len(shape) < 2 else \
            ((1, shape[1]) if len(shape) == 2 else (shape[-2], shape[-1]))

    def _graph(self, role: str) -> _Graph:
        g = self._graphs.get(role)
        if g is None:
            g = self._graphs[role] = _Graph(self.bundle, role, self.precision, *self._options, arena=self.arena)
        return g

    # --- geometry ---

    def padded(self, height: int, width: int) -> tuple[int, int]:
        """The size the graphs run at for an image of height x width."""
        m = self.size_multiple
        return (-(-height // m) * m, -(-width // m) * m) if m else (height, width)

    def latent_shape_for(self, height: int, width: int) -> tuple[int, ...]:
        """One item's latent shape for an image of this (original) size."""
        if not self.any_size:
            return self.latent_shape
        h, w = self.padded(height, width)
        return (self.latent_shape[0], h // self.stride, w // self.stride)


class Encoder(_Codec):
    """images -> payload bytes. One onnxruntime session per graph, created once; call from many threads.

    What `images` may be (`encode`, `encode_each`, `items`, `preprocess`), uint8 0..255 or float in [0, 1]:
    one image (H, W) gray or (H, W, C); a batch (N, H, W) gray, (N, H, W, C) or (N, C, H, W); an image file
    path or a PIL image; or a list of any of these, one image each (on any-size bundles they may differ in
    size). Gray vs colour must match the bundle unless `convert=True`; edgeae never resizes (a fixed-size
    bundle takes only its own H x W; an any-size one pads to `input.size_multiple` and the decoder crops).
    """

    role = "encoder"
    arena = False

    def __init__(self, bundle: Bundle | str | os.PathLike[str], precision: str = "fp32", device: Any = None,
                 threads: int | None = None, convert: bool = False, quality: int | None = None,
                 tile_pixels: int | None = None) -> None:
        """`convert`: let Pillow convert image files / PIL images of the other channel kind (gray <-> RGB)
        instead of refusing them. `quality`: the operating point 1..N of a multi-quality bundle (default: the
        one a zoo name gives, e.g. "photo:3", else the manifest's `entropy.default_quality`); a bundle of one
        quality takes none."""
        super().__init__(bundle, precision, device, threads, tile_pixels)
        self.images = input_adapter(self.manifest.input, convert=convert)
        self.quality = self._quality(quality)
        self.packer = wire.Packer(self.fingerprint, bits=self.bits, coder=self.coder_id, model=self.model_id,
                                  quality=self.quality)
        for role in self.entropy.graph_roles:  # build the entropy model's sessions now, not on the first image
            self._graph(role)

    def _quality(self, quality: int | None) -> int:
        n = self.entropy.qualities
        if quality is None:
            if not self.named_quality:
                return self.manifest.entropy.default_quality
            quality = self.named_quality  # checked like a given one: the zoo index could name a missing point
        if not n:
            raise InputError(f"bundle {self.bundle.path} has one quality; drop the quality ({quality}) or use a "
                             "multi-quality bundle")
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= n:
            raise InputError(f"quality {quality!r} is not one of this bundle's operating points 1..{n}")
        return quality

    # The steps, in order; `encode` is exactly their composition.
    def preprocess(self, images: Any) -> np.ndarray:
        """User images of one size -> float32 (N, C, H, W) graph input, unpadded (InputError if they do not fit)."""
        return self.images(images)

    def pad(self, x: np.ndarray) -> np.ndarray:
        """Graph input (N, C, H, W) -> padded at the bottom and right by edge replication to the size multiple."""
        if not self.any_size:
            return x
        h, w = x.shape[-2:]
        ph, pw = self.padded(h, w)
        if (ph, pw) == (h, w):
            return x
        return np.pad(x, ((0, 0), (0, 0), (0, ph - h), (0, pw - w)), mode="edge")

    def latents(self, x: np.ndarray) -> np.ndarray:
        """Graph input (N, C, H, W) of one size -> float32 latents (N, *latent_shape_for(H, W)), padded first."""
        x = self.pad(x)
        expect = self.latent_shape if not self.any_size else self.latent_shape_for(*x.shape[-2:])
        parts = []
        for a, b in _chunks(len(x), int(np.prod(x.shape[2:])), self.tile_pixels or GRAPH_PIXELS):
            xs = np.ascontiguousarray(x[a:b])
            y = self.graph.local(xs, self.stride, Fraction(1, self.stride), self.tile_pixels) \
                if self.any_size else self.graph.main(xs)
            if y.shape[1:] != expect:
                raise BundleError(f"{self.bundle.path}: the encoder graph gives shape {y.shape[1:]} but the "
                                  f"manifest says {expect}; re-export the bundle")
            parts.append(y)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def code(self, x: np.ndarray) -> list[wire.Item]:
        """Graph input (N, C, H, W) of one size -> the coded items (original size + entropy-coded parts)."""
        return self._code(self.pad(x), [self._wire_size(x.shape)] * len(x))

    def _code(self, x: np.ndarray, sizes: list[tuple[int, int]]) -> list[wire.Item]:
        coded = self.entropy.encode(self.latents(x), self.quality)
        return [wire.Item(h, w, parts) for (h, w), parts in zip(sizes, coded, strict=True)]

    def items(self, images: Any) -> list[wire.Item]:
        """User images (one array/batch, or a list of images of any sizes) -> coded items in input order."""
        return self._items(list(self._groups(images)))

    def _items(self, groups: list[tuple[list[int], np.ndarray, list[tuple[int, int]]]]) -> list[wire.Item]:
        out: list[Any] = [None] * sum(len(idx) for idx, _, _ in groups)
        for idx, x, sizes in groups:
            for i, item in zip(idx, self._code(x, sizes), strict=True):
                out[i] = item
        return out

    def pack(self, items: Sequence[wire.Item]) -> bytes:
        return self.packer.pack(items)

    def encode(self, images: Any) -> bytes:
        """One payload holding every image of the batch (images may differ in size on any-size bundles)."""
        groups = list(self._groups(images))
        n = sum(len(idx) for idx, _, _ in groups)
        if n > self.packer.max_items:
            raise InputError(f"{n} images exceed one payload's {self.packer.max_items}; use encode_each "
                             "or smaller batches")
        pixels = sum(int(np.prod(x.shape[2:])) * len(x) for _, x, _ in groups)
        if pixels > wire.MAX_PAYLOAD_PIXELS:
            raise InputError(f"{pixels} (padded) pixels exceed one payload's {wire.MAX_PAYLOAD_PIXELS}; use "
                             "encode_each or smaller batches")
        return self.pack(self._items(groups))

    def encode_each(self, images: Any) -> list[bytes]:
        """One payload per image (the graph still runs on whole groups)."""
        return [self.pack([item]) for item in self.items(images)]

    def symbols(self, images: Any) -> np.ndarray:
        """User images of one size -> int32 symbols (N, *latent_shape) (factorized entropy model)."""
        quantize = getattr(self.entropy, "quantize", None)
        if quantize is None:
            raise InputError(f"the {self.entropy.name} entropy model has no single symbol array; use items()")
        return quantize(self.latents(self.preprocess(images)))

    # --- helpers ---

    def _wire_size(self, shape: tuple[int, ...]) -> tuple[int, int]:
        if not self.any_size:
            return self.fixed_size
        h, w = int(shape[-2]), int(shape[-1])
        ph, pw = self.padded(h, w)
        if ph * pw > wire.MAX_ITEM_PIXELS or max(h, w) > wire.MAX_SIDE:
            raise InputError(f"an image of {h}x{w} pixels exceeds the format's limits (sides up to "
                             f"{wire.MAX_SIDE}, {wire.MAX_ITEM_PIXELS} pixels once padded); split or downscale "
                             "it first")
        return h, w

    def _groups(self, images: Any) -> Iterator[tuple[list[int], np.ndarray, list[tuple[int, int]]]]:
        """(input positions, padded graph input, original sizes) for every padded size in the input."""
        if not (isinstance(images, (list, tuple)) and self.any_size):
            x = self.preprocess(images)
            yield list(range(len(x))), self.pad(x), [self._wire_size(x.shape)] * len(x)
            return
        if not images:
            raise InputError("no images given")
        singles = [self.preprocess(im) for im in images]
        if any(len(s) != 1 for s in singles):
            raise InputError("a list of images must hold single images; pass a batch as one array instead")
        sizes = [self._wire_size(s.shape) for s in singles]
        for idx in _group([self.padded(*hw) for hw in sizes]).values():
            yield idx, np.concatenate([self.pad(singles[i]) for i in idx]), [sizes[i] for i in idx]


class Decoder(_Codec):
    """payload bytes -> images. Refuses payloads made with another bundle (FingerprintMismatch)."""

    role = "decoder"

    def __init__(self, bundle: Bundle | str | os.PathLike[str], precision: str = "fp32", device: Any = None,
                 threads: int | None = None, verify: bool = False, tile_pixels: int | None = None) -> None:
        """`verify`: check the entropy model's integer graph against its numpy reference on every payload
        (hyperprior: the hyper-decoder's table indices; a BundleError if they differ on this machine)."""
        super().__init__(bundle, precision, device, threads, tile_pixels)
        for role in self.entropy.graph_roles[1:]:  # the decoder side runs the hyper-decoder only
            self._graph(role)
        if verify:
            if not hasattr(self.entropy, "verify"):
                raise InputError(f"the {self.entropy.name} entropy model has no integer graph to verify")
            self.entropy.verify = True

    def parse(self, data: bytes | bytearray | memoryview) -> wire.Payload:
        """Strict parse, then check the payload belongs to this bundle and fits its sizes and symbol limits."""
        p = wire.parse(data)
        h = p.header
        if h.fingerprint != self.fingerprint:
            raise FingerprintMismatch(f"payload was made with bundle {h.fingerprint.hex()} but this bundle is "
                                      f"{self.fingerprint.hex()}; decode it with the bundle that encoded it")
        if h.coder != self.coder_id or h.bits != self.bits or h.model != self.model_id:
            raise CorruptStream(f"payload header (coder {h.coder}, {h.bits} bits, entropy model {h.model}) "
                                f"contradicts its bundle (coder {self.coder_id}, {self.bits} bits, entropy model "
                                f"{self.model_id})")
        n = self.entropy.qualities
        if (n and not 1 <= h.quality <= n) or (not n and h.quality):
            raise CorruptStream(f"payload quality {h.quality} contradicts its bundle's operating points "
                                f"({f'1..{n}' if n else 'none: one quality'})")
        if h.version == 1:
            if h.shape != self.latent_shape:
                raise CorruptStream(f"payload latent shape {h.shape} contradicts its bundle's {self.latent_shape}")
            return wire.Payload(h, tuple(wire.Item(*self.fixed_size, it.parts) for it in p.items))
        for height, width in set(h.sizes):
            if not self.any_size and (height, width) != self.fixed_size:
                raise CorruptStream(f"payload holds a {height}x{width} item but this bundle takes only "
                                    f"{self.fixed_size[0]}x{self.fixed_size[1]}")
        symbols = pixels = 0
        for height, width in h.sizes:  # the work the graphs would do: padded pixels and latent symbols
            n = int(np.prod(self.latent_shape_for(height, width)))
            ph, pw = self.padded(height, width)
            symbols += n
            pixels += ph * pw
            if n > wire.MAX_ITEM_SYMBOLS or symbols > wire.MAX_TOTAL_SYMBOLS or ph * pw > wire.MAX_ITEM_PIXELS \
                    or pixels > wire.MAX_PAYLOAD_PIXELS:
                raise CorruptStream(f"payload announces more padded pixels or latent symbols than the format's "
                                    f"limits ({wire.MAX_ITEM_PIXELS} / {wire.MAX_ITEM_SYMBOLS} an item, "
                                    f"{wire.MAX_PAYLOAD_PIXELS} / {wire.MAX_TOTAL_SYMBOLS} a payload)")
        return p

    def items(self, data: bytes | bytearray | memoryview) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
        """Payload -> (one float32 latent (*latent_shape_i) per item, each item's original (height, width)).

        Entropy decoding only (plus the hyper-decoder); `render` runs the decoder graph on any list of them."""
        p = self.parse(data)
        items, lanes = p.items, p.header.version >= 2  # version-1 bodies are single streams
        latents: list[np.ndarray] = [np.empty(0)] * len(items)
        for shape, idx in _group([self.latent_shape_for(it.height, it.width) for it in items]).items():
            y = self.entropy.decode([items[i].parts for i in idx], shape, lanes, p.header.quality)
            for i, yi in zip(idx, y, strict=True):
                latents[i] = yi
        return latents, [(it.height, it.width) for it in items]

    def latents(self, data: bytes | bytearray | memoryview) -> np.ndarray | list[np.ndarray]:
        """Payload -> the float32 latents the decoder graph takes: (N, *latent_shape) when every item has one
        size, else a list of per-item (*latent_shape_i) arrays."""
        return _stack(self.items(data)[0])

    def symbols(self, data: bytes | bytearray | memoryview) -> np.ndarray:
        """Payload -> int32 symbols (N, *latent_shape) (factorized entropy model, items of one size)."""
        decode_symbols = getattr(self.entropy, "decode_symbols", None)
        p = self.parse(data)
        shapes = {self.latent_shape_for(it.height, it.width) for it in p.items}
        if decode_symbols is None or len(shapes) != 1:  # a valid payload: asking it for one array is the misuse
            raise InputError("this payload has no single symbol array (several sizes, or not factorized); "
                             "use Decoder.latents or Decoder.items")
        return decode_symbols([it.parts[0] for it in p.items], shapes.pop(), p.header.version >= 2)

    def reconstruct(self, y: np.ndarray) -> np.ndarray:
        """Latents (N, *latent_shape) of one size -> the decoder graph's float32 output (N, C, H, W), padded
        size, in chunks of at most DECODE_BATCH items / tile_pixels pixels (larger items tiled where local)."""
        if self.any_size:
            h, w = y.shape[-2:]
            expect: tuple[int, ...] = (self.manifest.input.shape[0], h * self.stride, w * self.stride)
        else:
            expect = tuple(self.manifest.input.shape)
        parts = []
        for a, b in _chunks(len(y), int(np.prod(expect[1:])), self.tile_pixels or GRAPH_PIXELS):
            ys = np.ascontiguousarray(y[a:b], np.float32)
            if self.any_size:  # the budget in latent cells: at least one while tiling is on
                x = self.graph.local(ys, 1, Fraction(self.stride), -(-self.tile_pixels // self.stride ** 2))
            else:
                x = self.graph.main(ys)
            if x.shape[1:] != expect:
                raise BundleError(f"{self.bundle.path}: the decoder graph gives shape {x.shape[1:]} but the "
                                  f"manifest says {expect}; re-export the bundle")
            parts.append(x)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def render(self, latents: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]],
               as_float: bool = False) -> list[np.ndarray]:
        """Per-item latents + original sizes (from `items`, of one or many payloads) -> per-item images,
        cropped, through the manifest's inverse normalisation: uint8 (H, W) / (H, W, C), or float32 (C, H, W) in
        [0, 1] with as_float; tensor bundles: float32 (*shape) in the user's units. One decoder graph run per
        latent shape (in chunks)."""
        post = self.images.postprocess
        out: list[np.ndarray] = [np.empty(0)] * len(latents)
        for _, idx in _group([tuple(y.shape) for y in latents]).items():
            x = self.reconstruct(np.stack([latents[i] for i in idx]))
            crop = self.any_size and any(sizes[i] != x.shape[-2:] for i in idx)
            if not crop:
                x = post(x, as_float=as_float)  # the whole group at once
            for i, xi in zip(idx, x, strict=True):
                if crop:
                    h, w = sizes[i]
                    xi = post(xi[None, :, :h, :w], as_float=as_float)[0]
                out[i] = xi
        return out

    def from_symbols(self, q: np.ndarray, as_float: bool = False) -> np.ndarray:
        """int symbols (N, *latent_shape) -> images (factorized; no crop): uint8 (N, H, W) / (N, H, W, C), or
        float32 (N, C, H, W) in [0, 1] with as_float; tensor bundles: float32 (N, *shape) in the user's units."""
        dequantize = getattr(self.entropy, "dequantize", None)
        if dequantize is None:
            raise InputError(f"the {self.entropy.name} entropy model has no single symbol array; use render()")
        return self.images.postprocess(self.reconstruct(dequantize(q)), as_float=as_float)

    def decode(self, data: bytes | bytearray | memoryview, as_float: bool = False) -> np.ndarray | list[np.ndarray]:
        """Payload -> uint8 images (N, H, W) for gray or (N, H, W, C); float32 (N, C, H, W) with as_float.
        A payload of several image sizes gives a list of per-item images instead of one array."""
        return _stack(self.render(*self.items(data), as_float=as_float))


def _chunks(n: int, pixels: int, limit: int = GRAPH_PIXELS) -> list[tuple[int, int]]:
    """[a, b) ranges of at most DECODE_BATCH items and `limit` pixels (at least one item each)."""
    step = max(1, min(DECODE_BATCH, limit // max(pixels, 1)))
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def _group(keys: Sequence[tuple[int, ...]]) -> dict[tuple[int, ...], list[int]]:
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return groups


def _stack(arrays: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    return np.stack(arrays) if len({a.shape for a in arrays}) == 1 else arrays
