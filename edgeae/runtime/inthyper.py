"""The integer hyper-decoder in numpy int64: the reference the `hyper_decoder` ONNX graph must match bit for bit.

A hyperprior bundle's `hyper_decoder.onnx` (built by edgeae/bundling/hyper.py) maps the integer hyper-latent z
(int32 values, N x Cz x h x w) to the scale-table index of every latent symbol (int32, N x M x 4h x 4w) with
integer arithmetic only, so encoder and decoder compute the same indices on any CPU. This module reads the
parameters out of that very file (its initializers, and the layer layout in the metadata entry
`edgeae.int_hyper_decoder`, with a small protobuf reader: the runtime has no `onnx`) and runs them:

    x_0 = clip(z, z_min, z_max) - z_min                        uint8, zero point zp_0 = -z_min
    for each layer i:
        acc   = conv3x3(x_i - zp_i, w_i)                       int8 weights, int32 accumulator, zero padding
        v     = acc * m_i + b_i                                int64 fixed point, 2^shift = 1.0
        x_i+1 = clip(floor(v / 2^shift), 0, hi_i)              hidden layers: uint8 (hi 255); last: index
        x_i+1 = depth_to_space(x_i+1, up_i)                    (CRD order, PyTorch's PixelShuffle) if up_i > 1

With means (mean-scale, `mean_range` R > 0) the last layer has 2M output channels: the first M give the index
as above, the other M the mean of every y symbol in 1/P steps (`mean_phases` P, 1: integer means),
clip(floor(v / 2^shift), 0, 2RP) - RP (the exporter folds the +RP and the rounding half into the bias).

No float appears anywhere. Everything here is torch- and onnx-free (the runtime's light install).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeae.errors import BundleError

FORMAT = 1
FORMAT_MEANS = 2  # with a mean head: older runtimes must refuse it ("upgrade"), not misread it
FORMAT_PHASES = 3  # means in 1/P steps (P > 1): a format-2 runtime would read them as integers
MAX_MEAN_PHASES = 64
MAX_LAYERS = 8
MAX_CHANNELS = 4096
INT64_HEADROOM = 1 << 62  # |acc * m + b| must stay below this (checked when the parameters load)
MAX_MEAN_RANGE = 1 << 15
META_KEY = "edgeae.int_hyper_decoder"
MAX_GRAPH_BYTES = 64 << 20


@dataclass(frozen=True)
class IntLayer:
    weight: np.ndarray  # int8 (Cout, Cin, k, k)
    mult: np.ndarray  # int64 (Cout,)
    bias: np.ndarray  # int64 (Cout,)
    hi: int  # output clip [0, hi]
    up: int  # depth-to-space block size after the layer (1: none)
    zero_point: int  # of this layer's input

    @property
    def acc_bound(self) -> int:
        """Largest |accumulator| any input can produce: inputs lie in [0, 255] minus the zero point."""
        span = max(self.zero_point, 255 - self.zero_point)
        return int(np.abs(self.weight.astype(np.int64)).reshape(len(self.weight), -1).sum(axis=1).max()) * span


@dataclass(frozen=True)
class IntHyperDecoder:
    layers: tuple[IntLayer, ...]
    shift: int
    z_min: int
    z_max: int
    levels: int  # K: the last layer's index output lies in 0..K-1
    mean_range: int = 0  # R > 0: the last layer also gives means in -R..R (mean-scale), in 1/P steps
    mean_phases: int = 1  # P

    @property
    def mean_bound(self) -> int:
        """R * P: the mean output lies in -RP..RP (units of 1/P)."""
        return self.mean_range * self.mean_phases

    @property
    def in_channels(self) -> int:
        return int(self.layers[0].weight.shape[1])

    @property
    def out_channels(self) -> int:
        """M, the y channels (the last layer has 2M outputs with means)."""
        return int(self.layers[-1].weight.shape[0] // self.layers[-1].up ** 2) // (2 if self.mean_range else 1)

    @property
    def upsampling(self) -> int:
        f = 1
        for layer in self.layers:
            f *= layer.up
        return f

    def layout(self) -> dict[str, Any]:
        """The non-array facts, stored as JSON in the graph's metadata under META_KEY."""
        fmt = (FORMAT_PHASES if self.mean_phases > 1 else FORMAT_MEANS) if self.mean_range else FORMAT
        out = {"format": fmt, "shift": self.shift, "levels": self.levels, "z_range": [self.z_min, self.z_max],
               "layers": [{"hi": la.hi, "up": la.up, "zero_point": la.zero_point} for la in self.layers]}
        if self.mean_range:
            out["mean_range"] = self.mean_range
        if self.mean_phases > 1:
            out["mean_phases"] = self.mean_phases
        return out

    @classmethod
    def from_parts(cls, layout: Any, arrays: dict[str, np.ndarray], where: str = "hyper-decoder") -> IntHyperDecoder:
        """Validate and build from the layout and the arrays w{i} (int8, or uint8 w + 128 with w_zero_point{i}
        = 128 as bundling.hyper writes since 2026-12-04), m{i}, b{i} (int64, any shape with C elements); any
        inconsistency is a BundleError naming `where`."""

        def bad(what: str) -> BundleError:
            return BundleError(f"{where}: {what}; re-export the bundle")

        try:
            if layout["format"] not in (FORMAT, FORMAT_MEANS, FORMAT_PHASES):
                raise BundleError(f"{where}: integer hyper-decoder format {layout['format']!r} is unknown; "
                                  "upgrade edgeae")
            shift, levels = int(layout["shift"]), int(layout["levels"])
            z_min, z_max = (int(v) for v in layout["z_range"])
            mean_range = int(layout.get("mean_range", 0))
            phases = int(layout.get("mean_phases", 1))
            if (layout["format"] != FORMAT) != (mean_range > 0) or (layout["format"] == FORMAT_PHASES) != (phases > 1):
                raise ValueError(f"format {layout['format']} with mean_range {mean_range}, mean_phases {phases}")
            metas = [(int(la["hi"]), int(la["up"]), int(la["zero_point"])) for la in layout["layers"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"malformed layout ({type(exc).__name__}: {exc})") from None
        if not (0 < shift <= 48 and 2 <= levels <= 1 << 16 and 1 <= len(metas) <= MAX_LAYERS
                and z_min <= 0 <= z_max and z_max - z_min <= 255 and 0 <= mean_range
                and 1 <= phases <= MAX_MEAN_PHASES and mean_range * phases <= MAX_MEAN_RANGE):
            raise bad("shift, levels, layers or z_range out of range")
        layers: list[IntLayer] = []
        for i, (hi, up, zp) in enumerate(metas):
            try:
                w, m, b = arrays[f"w{i}"], arrays[f"m{i}"].reshape(-1), arrays[f"b{i}"].reshape(-1)
            except KeyError as exc:
                raise bad(f"missing array {exc}") from None
            if w.dtype == np.uint8:  # since 2026-12-04: uint8 w + 128 with zero point 128 (bundling.hyper)
                wzp = arrays.get(f"w_zero_point{i}")
                if wzp is None or wzp.dtype != np.uint8 or wzp.size != 1 or int(wzp.reshape(-1)[0]) != 128:
                    raise bad(f"layer {i} uint8 weights need the zero point 128")
                w = (w.astype(np.int16) - 128).astype(np.int8)
            if w.dtype != np.int8 or m.dtype != np.int64 or b.dtype != np.int64:
                raise bad(f"layer {i} arrays have the wrong types")
            last = i == len(metas) - 1
            ok = (w.ndim == 4 and w.shape[2] == w.shape[3] and w.shape[2] % 2 == 1 and 0 < w.shape[0] <= MAX_CHANNELS
                  and 0 < w.shape[1] <= MAX_CHANNELS and m.shape == b.shape == (w.shape[0],)
                  and up in (1, 2, 4) and w.shape[0] % (up * up) == 0 and 0 <= zp <= 255
                  and hi == (levels - 1 if last else 255) and (up == 1 or not last)
                  and (not last or not mean_range or w.shape[0] % 2 == 0))
            if ok and layers:
                prev = layers[-1]
                ok = w.shape[1] == prev.weight.shape[0] // prev.up**2 and zp == 0
            if ok and not layers:
                ok = zp == -z_min
            if not ok:
                raise bad(f"layer {i} is inconsistent (shapes, block size, clip or zero point)")
            layer = IntLayer(w, m, b, hi, up, zp)
            if layer.acc_bound * int(np.abs(m).max()) + int(np.abs(b).max()) >= INT64_HEADROOM:
                raise bad(f"layer {i} could overflow int64")
            layers.append(layer)
        return cls(tuple(layers), shift, z_min, z_max, levels, mean_range, phases)

    @classmethod
    def from_onnx(cls, data: bytes, where: str = "hyper_decoder.onnx") -> IntHyperDecoder:
        """Parameters of an integer hyper-decoder graph (the bytes of hyper_decoder.onnx)."""
        arrays, meta = read_onnx_params(data, where)
        if META_KEY not in meta:
            raise BundleError(f"{where}: no {META_KEY!r} metadata; it is not an integer hyper-decoder graph")
        try:
            layout = json.loads(meta[META_KEY])
        except ValueError:
            raise BundleError(f"{where}: {META_KEY} metadata is not JSON; re-export the bundle") from None
        return cls.from_parts(layout, arrays, where)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> IntHyperDecoder:
        p = Path(path)
        if p.stat().st_size > MAX_GRAPH_BYTES:
            raise BundleError(f"{p} is larger than {MAX_GRAPH_BYTES} bytes; not a hyper-decoder graph")
        return cls.from_onnx(p.read_bytes(), str(p))

    # --- the reference computation ---

    def __call__(self, z: np.ndarray) -> np.ndarray:
        """int z values (N, Cz, h, w) -> int32 scale indices (N, M, h * up, w * up), in int64 throughout."""
        return self.decode(z)[0]

    def decode(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """int z values -> (int32 scale indices, int32 means in 1/P steps or None without means), in int64
        throughout."""
        z = np.asarray(z)
        if z.ndim != 4 or z.shape[1] != self.in_channels or z.dtype.kind not in "iu":
            raise ValueError(f"z must be integer (N, {self.in_channels}, h, w), got {z.dtype} {z.shape}")
        x = np.clip(z.astype(np.int64), self.z_min, self.z_max) - self.z_min
        mean = None
        for i, layer in enumerate(self.layers):
            acc = conv2d_int(x - layer.zero_point, layer.weight.astype(np.int64))
            v = acc * layer.mult[None, :, None, None] + layer.bias[None, :, None, None]
            q = v >> self.shift  # arithmetic shift = floor division by 2^shift
            if i == len(self.layers) - 1 and self.mean_range:
                m = self.out_channels
                mean = (np.clip(q[:, m:], 0, 2 * self.mean_bound) - self.mean_bound).astype(np.int32)
                q = q[:, :m]
            x = np.clip(q, 0, layer.hi)
            if layer.up > 1:
                x = depth_to_space(x, layer.up)
        return x.astype(np.int32), mean


def conv2d_int(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Stride-1 'same' convolution (cross-correlation, zero padding) of int64 (N, C, H, W) with (O, C, k, k)."""
    k = w.shape[-1]
    p = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))  # (N, C, H, W, k, k)
    return np.einsum("nchwij,ocij->nohw", win, w, optimize=True)


def depth_to_space(x: np.ndarray, r: int) -> np.ndarray:
    """ONNX DepthToSpace mode CRD (= torch.nn.PixelShuffle): (N, C*r*r, H, W) -> (N, C, H*r, W*r)."""
    n, c, h, w = x.shape
    return x.reshape(n, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(n, c // (r * r), h * r, w * r)


# --- a minimal protobuf reader: ModelProto.graph.initializer (raw_data tensors) and metadata_props ---

_ONNX_DTYPES = {2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 13: np.uint64}  # TensorProto.DataType values


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        out |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return out, pos


def _fields(buf: bytes):
    """(field number, wire type, value) of one message: value is an int (varint/fixed) or bytes (length)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        val: int | bytes
        if wire == 0:
            val, pos = _varint(buf, pos)
        elif wire == 1:
            val, pos = int.from_bytes(buf[pos : pos + 8], "little"), pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError("truncated field")
            val, pos = buf[pos : pos + n], pos + n
        elif wire == 5:
            val, pos = int.from_bytes(buf[pos : pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated field")
        yield num, wire, val


def _tensor(buf: bytes) -> tuple[str, np.ndarray]:
    dims: list[int] = []
    dtype, name, raw = None, "", None
    for num, wire, val in _fields(buf):
        if num == 1 and wire == 0:
            dims.append(int(val))
        elif num == 1 and wire == 2:  # packed dims
            pos = 0
            while pos < len(val):
                d, pos = _varint(val, pos)
                dims.append(d)
        elif num == 2:
            dtype = _ONNX_DTYPES.get(int(val))
        elif num == 8:
            name = bytes(val).decode()
        elif num == 9:
            raw = bytes(val)
    if dtype is None or raw is None:
        raise ValueError(f"initializer {name!r} is not an integer raw_data tensor")
    count = int(np.prod(dims)) if dims else 1
    if count * np.dtype(dtype).itemsize != len(raw):
        raise ValueError(f"initializer {name!r} has {len(raw)} bytes for shape {dims}")
    return name, np.frombuffer(raw, np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(dims)


def read_onnx_params(data: bytes, where: str = "graph") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(initializers by name, metadata_props) of a serialized ONNX model, without the onnx package."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, str] = {}
    try:
        for num, wire, val in _fields(data):
            if num == 7 and wire == 2:  # ModelProto.graph
                for gnum, gwire, gval in _fields(val):
                    if gnum == 5 and gwire == 2:  # GraphProto.initializer
                        name, arr = _tensor(gval)
                        arrays[name] = arr
            elif num == 14 and wire == 2:  # ModelProto.metadata_props
                kv = {n: bytes(v).decode() for n, w, v in _fields(val) if w == 2}
                meta[kv.get(1, "")] = kv.get(2, "")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{where}: cannot read the graph's parameters ({exc}); re-export the bundle") from None
    return arrays, meta


def verify(params: IntHyperDecoder, z: np.ndarray, index: np.ndarray, where: str = "hyper_decoder",
           mean: np.ndarray | None = None) -> None:
    """Raise BundleError unless `index` (and `mean`), what onnxruntime computed from `z`, equal the int64
    reference."""
    ref, ref_mean = params.decode(z)
    for what, got_, want in (("table indices", index, ref), ("means", mean, ref_mean)):
        if got_ is None and want is None:
            continue
        got = np.asarray(got_)
        if want is None or got.shape != want.shape or not np.array_equal(got.astype(np.int64), want.astype(np.int64)):
            bad = int((got != want).sum()) if want is not None and got.shape == want.shape else got.size
            raise BundleError(f"{where}: onnxruntime's {what} differ from the integer reference on {bad} of "
                              f"{ref.size} symbols on this machine; payloads may not decode elsewhere: report it "
                              "with `edgeae doctor` output")
