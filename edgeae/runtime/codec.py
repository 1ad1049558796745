"""Encoder / Decoder: the whole pipeline, image -> payload bytes -> image, with each step callable alone.

    images -> ImageAdapter -> encoder graph -> Quantizer -> SymbolCoder -> payload.pack -> bytes
    bytes -> payload.parse (+ fingerprint) -> SymbolCoder -> Quantizer -> decoder graph -> uint8 images
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from edgeae.errors import BundleError, CorruptStream, FingerprintMismatch, InputError
from edgeae.runtime import payload as wire
from edgeae.runtime.bundle import Bundle
from edgeae.runtime.entropy import SymbolCoder
from edgeae.runtime.images import ImageAdapter, to_uint8
from edgeae.runtime.quantize import Quantizer
from edgeae.runtime.session import make_session

DECODE_BATCH = 256  # decoder graph runs in chunks of this many items, whatever the payload holds


class _Codec:
    """What both sides share: the verified bundle, one graph session, the quantiser and the entropy coder."""

    role = ""

    def __init__(self, bundle: Bundle | str | os.PathLike[str], precision: str = "fp32", device: Any = None,
                 threads: int | None = None) -> None:
        """`bundle`: a Bundle or its folder; `device`: a device profile (name, TOML path or DeviceProfile);
        `threads`: onnxruntime intra-op threads (overrides the profile's)."""
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle, partial=True)
        m = self.bundle.manifest
        self.manifest = m
        self.precision = precision
        self.session = make_session(self.bundle.graph_bytes(self.role, precision), profile=device, threads=threads)
        self._input, self._outputs = _check_io(self.session, m.graphs[self.role], self.bundle, self.role)
        self.quantizer = Quantizer(m.latent)
        self.coder = SymbolCoder(m.latent, m.entropy)
        self.fingerprint = self.bundle.fingerprint_prefix
        self.latent_shape = m.latent.shape
        self.bits = m.latent.quantization.bits
        self.coder_id = wire.CODER_IDS[m.entropy.coder]

    def _run(self, x: np.ndarray, expect: tuple[int, ...]) -> np.ndarray:
        out = self.session.run(self._outputs, {self._input: x})[0]
        if out.shape[1:] != expect:
            raise BundleError(f"{self.bundle.path}: the {self.role} graph gives shape {out.shape[1:]} but the "
                              f"manifest says {expect}; re-export the bundle")
        return out


class Encoder(_Codec):
    """images -> payload bytes. One onnxruntime session, created once; call from many threads if you like."""

    role = "encoder"

    def __init__(self, bundle: Bundle | str | os.PathLike[str], precision: str = "fp32", device: Any = None,
                 threads: int | None = None) -> None:
        super().__init__(bundle, precision, device, threads)
        self.images = ImageAdapter(self.manifest.input)
        self.packer = wire.Packer(self.fingerprint, self.latent_shape, bits=self.bits, coder=self.coder_id)

    # The steps, in order; `encode` is exactly their composition.
    def preprocess(self, images: Any) -> np.ndarray:
        """User images -> float32 (N, C, H, W) graph input (InputError if they do not fit)."""
        return self.images(images)

    def latents(self, x: np.ndarray) -> np.ndarray:
        """Graph input -> float32 latents (N, *latent_shape)."""
        return self._run(x, self.latent_shape)

    def symbols(self, images: Any) -> np.ndarray:
        """User images -> int32 symbols (N, *latent_shape)."""
        return self.quantizer.quantize(self.latents(self.preprocess(images)))

    def pack(self, bodies: list[bytes]) -> bytes:
        return self.packer.pack(bodies)

    def encode(self, images: Any) -> bytes:
        """One payload holding every image of the batch."""
        x = self.preprocess(images)
        if len(x) > self.packer.max_items:
            raise InputError(f"{len(x)} images exceed one payload's {self.packer.max_items}; use encode_each "
                             "or smaller batches")
        return self.pack(self.coder.encode(self.quantizer.quantize(self.latents(x))))

    def encode_each(self, images: Any) -> list[bytes]:
        """One payload per image (the graph still runs on the whole batch)."""
        return [self.pack([body]) for body in self.coder.encode(self.symbols(images))]


class Decoder(_Codec):
    """payload bytes -> images. Refuses payloads made with another bundle (FingerprintMismatch)."""

    role = "decoder"

    def parse(self, data: bytes | bytearray | memoryview) -> wire.Payload:
        """Strict parse, then check the payload belongs to this bundle."""
        p = wire.parse(data)
        h = p.header
        if h.fingerprint != self.fingerprint:
            raise FingerprintMismatch(f"payload was made with bundle {h.fingerprint.hex()} but this bundle is "
                                      f"{self.fingerprint.hex()}; decode it with the bundle that encoded it")
        if h.coder != self.coder_id or h.bits != self.bits or h.shape != self.latent_shape:
            raise CorruptStream(f"payload header (coder {h.coder}, {h.bits} bits, shape {h.shape}) contradicts "
                                f"its bundle (coder {self.coder_id}, {self.bits} bits, shape {self.latent_shape})")
        return p

    def symbols(self, data: bytes | bytearray | memoryview) -> np.ndarray:
        """Payload -> int32 symbols (N, *latent_shape)."""
        return self.coder.decode(self.parse(data).bodies)

    def reconstruct(self, y: np.ndarray) -> np.ndarray:
        """Latents (N, *latent_shape) -> float32 images (N, C, H, W) in [0, 1], in graph-sized chunks."""
        image_shape = self.manifest.input.shape
        parts = [self._run(np.ascontiguousarray(y[i : i + DECODE_BATCH], np.float32), image_shape)
                 for i in range(0, len(y), DECODE_BATCH)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def from_symbols(self, q: np.ndarray, as_float: bool = False) -> np.ndarray:
        """int symbols -> images: uint8 (N, H, W) / (N, H, W, C), or float32 (N, C, H, W) with as_float."""
        x = self.reconstruct(self.quantizer.dequantize(q))
        return x if as_float else to_uint8(x)

    def decode(self, data: bytes | bytearray | memoryview, as_float: bool = False) -> np.ndarray:
        """Payload -> uint8 images (N, H, W) for gray or (N, H, W, C); float32 (N, C, H, W) with as_float."""
        return self.from_symbols(self.symbols(data), as_float=as_float)


def _check_io(session: Any, graph: Any, bundle: Bundle, role: str) -> tuple[str, list[str]]:
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != [graph.input] or graph.output not in outputs:
        raise BundleError(f"{bundle.path}: the {role} graph has inputs {inputs} / outputs {outputs} but the "
                          f"manifest names {graph.input!r} -> {graph.output!r}; re-export the bundle")
    return graph.input, [graph.output]
