"""The bundle manifest (docs/MANIFEST.md) as dataclasses: strict validation on load, exact dict on save."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeae.errors import BundleError
from edgeae.fsutil import read_json_bounded

SCHEMA = "edgeae.bundle"
MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 32 << 20
MAX_FILE_BYTES = 1 << 40  # one listed file (a graph over a TiB is not a bundle)
MAX_LATENT_BITS = 24
MAX_LATENT_SYMBOLS = 1 << 24  # = payload.MAX_ITEM_SYMBOLS (the runtime never decodes more per item)
MAX_PRECISION = 24  # the range coder (rangecoder.py, constriction's) quantises probabilities to 24 bits
MAX_TABLE = (1 << 24) - 2  # symbols of one entropy table: constriction's limit (rangecoder.MAX_TABLE)
ROLES = ("encoder", "decoder")  # required graphs; a bundle may add others (an entropy model's, docs/EXPORT.md)
CHANNELS = {"L": 1, "RGB": 3}
KINDS = ("image", "tensor")
MAX_EXTRA_GRAPHS = 8
MAX_HALO = 4096  # a graph's tiling halo, in its input cells (edgeae.bundling.halo writes no larger one)
_KNOWN = ("schema", "version", "name", "model", "input", "graphs", "latent", "entropy", "fingerprint", "files",
          "quality", "int8", "source", "tools")


@dataclass(frozen=True)
class InputSpec:
    """What the encoder graph takes and the decoder graph gives back (docs/MANIFEST.md, "input").

    kind "image": shape (C, H, W), uint8 pixels p map to the graph as p * scale[c] + offset[c] (float images in
    [0, 1] are read as p / 255); the decoder output maps back by the inverse, clipped to 0..255.
    kind "tensor": shape (C, ...) of raw floats x (a sensor window (C, L), a feature vector (D,)), mapped as
    x * scale[c] + offset[c] and back by the inverse, unclipped. `scale` / `offset` are one number for every
    channel or one per channel. `size_multiple` > 0: the graphs take any H, W (images padded to a multiple).
    """

    shape: tuple[int, ...]  # C, H, W for images; (C, ...) for tensors
    channel_order: str | None  # "L" or "RGB" for images; None for tensors
    scale: float | tuple[float, ...]  # graph input = value * scale + offset (per channel when a tuple)
    offset: float | tuple[float, ...]
    dtype: str = "float32"
    layout: str = "NCHW"
    kind: str = "image"  # "image" or "tensor"
    size_multiple: int = 0  # images only: 0 = fixed size; else any H, W, padded by the runtime to this multiple

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def scales(self) -> tuple[float, ...]:
        """The scale of each channel."""
        return _per_channel(self.scale, self.channels)

    @property
    def offsets(self) -> tuple[float, ...]:
        return _per_channel(self.offset, self.channels)

    @property
    def dynamic_size(self) -> bool:
        return self.kind == "image" and self.size_multiple > 0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"shape": list(self.shape), "dtype": self.dtype, "layout": self.layout}
        if self.kind != "image":
            d = {"kind": self.kind, **d}
        if self.channel_order is not None:
            d["channel_order"] = self.channel_order
        d["scale"] = list(self.scale) if isinstance(self.scale, tuple) else self.scale
        d["offset"] = list(self.offset) if isinstance(self.offset, tuple) else self.offset
        if self.size_multiple:
            d["size_multiple"] = self.size_multiple
        return d


def _per_channel(v: float | tuple[float, ...], channels: int) -> tuple[float, ...]:
    return tuple(v) if isinstance(v, tuple) else (float(v),) * channels


def tensor_layout(ndim: int) -> str:
    """The layout name of a tensor input with `ndim` axes besides the batch: NC, NCL, NCHW, NCDHW."""
    return {1: "NC", 2: "NCL", 3: "NCHW", 4: "NCDHW"}[ndim]


@dataclass(frozen=True)
class GraphEntry:
    file: str
    input: str
    output: str
    opset: int
    int8_file: str | None = None
    digest: str | None = None  # sha256 of the fp32 graph without its metadata (the fingerprint's part)
    int8_digest: str | None = None  # the same of the int8 graph (part of the fingerprint when recorded)
    # input cells each side an output cell may depend on, both precisions: the graph may run on overlapping
    # tiles (edgeae.runtime.tiles); None: not proven local, it runs whole
    halo: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"file": self.file, "input": self.input, "output": self.output, "opset": self.opset,
                             "int8_file": self.int8_file}
        if self.digest is not None:
            d["digest"] = self.digest
        if self.int8_digest is not None:
            d["int8_digest"] = self.int8_digest
        if self.halo is not None:
            d["halo"] = self.halo
        return d


@dataclass(frozen=True)
class Quantization:
    bits: int
    levels: int  # symbols per channel: 0 .. levels-1
    offset: tuple[float, ...]  # one per channel
    step: tuple[float, ...]  # one per channel, > 0

    def to_dict(self) -> dict[str, Any]:
        return {"bits": self.bits, "levels": self.levels, "offset": list(self.offset), "step": list(self.step)}


@dataclass(frozen=True)
class LatentSpec:
    shape: tuple[int, ...]  # without the batch axis; at the reference input size when `stride` > 0
    channel_axis: int  # axis of the *batched* latent that indexes channels (>= 1)
    quantization: Quantization
    stride: int = 0  # > 0: spatial downsampling of (C, H, W) latents; latent H, W = padded input H, W / stride

    @property
    def channels(self) -> int:
        return self.shape[self.channel_axis - 1]

    @property
    def symbols(self) -> int:
        """Integer symbols per image."""
        return math.prod(self.shape)

    def to_dict(self) -> dict[str, Any]:
        d = {"shape": list(self.shape), "channel_axis": self.channel_axis}
        if self.stride:
            d["stride"] = self.stride
        return {**d, "quantization": self.quantization.to_dict()}


ENTROPY_MODELS = ("factorized", "hyperprior")
MAX_TABLE_ENTRIES = 1 << 22  # all frequencies of one entropy section together


@dataclass(frozen=True)
class TableFamily:
    """Conditional tables (docs/FORMAT.md): table t codes values offset[t] .. offset[t] + len(row) - 2, and its
    last entry is the escape. `stride`: z only, the hyper-latent's downsampling of the latent y; `means`: y only,
    whether the hyper-decoder also gives a mean, in 1/`mean_phases` steps (table k * P + p is scale index k's
    table for the means' fractional part p / P); `scales`: y only, the scale of each scale index (informational:
    coding uses the integer tables)."""

    offsets: tuple[int, ...]
    frequencies: tuple[tuple[int, ...], ...]
    stride: int = 0
    means: bool = False
    scales: tuple[float, ...] = ()
    mean_phases: int = 1

    def to_dict(self, part: str) -> dict[str, Any]:
        d: dict[str, Any] = {"stride": self.stride} if part == "z" else {"means": self.means,
                                                                          "scales": list(self.scales)}
        if self.mean_phases > 1:
            d["mean_phases"] = self.mean_phases
        d["tables"] = [{"offset": o, "frequencies": list(f)} for o, f in zip(self.offsets, self.frequencies,
                                                                               strict=True)]
        return d


MAX_QUALITIES = 64  # operating points of one multi-quality bundle (the payload's quality byte allows 255)


@dataclass(frozen=True)
class QualitySpec:
    """One operating point of a multi-quality hyperprior bundle: the latent is coded as round(y * gain) per
    channel and decoded as that / gain, with this point's own z tables (`z.stride` is the bundle's)."""

    lmbda: float
    gain: tuple[float, ...]  # one positive gain per latent channel
    z: TableFamily

    def to_dict(self) -> dict[str, Any]:
        return {"lmbda": self.lmbda, "gain": list(self.gain), "z": {"tables": self.z.to_dict("z")["tables"]}}


@dataclass(frozen=True)
class EntropySpec:
    """`model` "factorized" (the default): `frequencies` holds one row of `levels` ints >= 1 per latent channel.
    "hyperprior": `z` and `y` hold conditional tables and `frequencies` is empty (docs/MANIFEST.md). A
    multi-quality hyperprior (`qualities`, operating points 1..len) keeps only its stride in `z`: each quality
    has its own gain vector and z tables; `y`'s tables, the graphs and the hyper-decoder are shared."""

    coder: str  # "range"
    precision: int  # every table row sums to 2**precision
    frequencies: tuple[tuple[int, ...], ...]  # factorized: one row of `levels` ints >= 1 per channel
    model: str = "factorized"
    z: TableFamily | None = None
    y: TableFamily | None = None
    qualities: tuple[QualitySpec, ...] = ()
    default_quality: int = 0  # 1..len(qualities) when there are qualities

    def to_dict(self) -> dict[str, Any]:
        if self.model == "factorized":
            return {"coder": self.coder, "precision": self.precision,
                    "frequencies": [list(r) for r in self.frequencies]}
        assert self.z is not None and self.y is not None
        z = {"stride": self.z.stride} if self.qualities else self.z.to_dict("z")
        d = {"model": self.model, "coder": self.coder, "precision": self.precision, "z": z, "y": self.y.to_dict("y")}
        if self.qualities:
            d.update(qualities=[q.to_dict() for q in self.qualities], default_quality=self.default_quality)
        return d

    def z_tables(self, quality: int = 0) -> TableFamily:
        """The z tables a hyperprior codes with at `quality` (1..len(qualities); 0 for a one-quality bundle)."""
        assert self.z is not None
        return self.qualities[quality - 1].z if self.qualities else self.z


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "bytes": self.bytes}


@dataclass(frozen=True)
class Manifest:
    """A validated manifest. Free-form sections (model, quality, int8, source, tools) stay plain dicts."""

    name: str
    input: InputSpec
    graphs: dict[str, GraphEntry]
    latent: LatentSpec
    entropy: EntropySpec
    fingerprint: str  # sha256 hex; payloads carry its first 8 bytes
    files: dict[str, FileEntry]
    model: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)
    int8: dict[str, Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # top-level keys this version does not know; kept
    version: int = MANIFEST_VERSION

    @classmethod
    def from_dict(cls, data: Any, source: str = MANIFEST_NAME) -> Manifest:
        """Validate a parsed manifest.json; a BundleError names the first bad field."""
        return _Validator(source).manifest(data)

    def to_dict(self) -> dict[str, Any]:
        """The manifest.json content, keys in the documented order (the exporter writes this)."""
        return {
            "schema": SCHEMA,
            "version": self.version,
            "name": self.name,
            "model": self.model,
            "input": self.input.to_dict(),
            "graphs": {role: g.to_dict() for role, g in self.graphs.items()},
            "latent": self.latent.to_dict(),
            "entropy": self.entropy.to_dict(),
            "fingerprint": self.fingerprint,
            "files": {name: f.to_dict() for name, f in self.files.items()},
            "quality": self.quality,
            "int8": self.int8,
            "source": self.source,
            "tools": self.tools,
            **self.extra,
        }


def read_manifest_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw JSON of a bundle folder's manifest.json (or a manifest path): size, depth and digit bounded
    (`fsutil.read_json_bounded`); a BundleError, never RecursionError or ValueError."""
    p = Path(path)
    p = p / MANIFEST_NAME if p.is_dir() else p
    return read_json_bounded(p, MAX_MANIFEST_BYTES, BundleError,
                             hint="is it a bundle written by `edgeae export`? (re-export the bundle)")


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Load and validate the manifest of a bundle folder (or a manifest.json path)."""
    p = Path(path)
    return Manifest.from_dict(read_manifest_json(p), source=str(p / MANIFEST_NAME if p.is_dir() else p))


class _Validator:
    """Type and range checks that raise one BundleError naming the field (e.g. `latent.quantization.step[3]`)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, problem: str) -> BundleError:
        return BundleError(f"{self.source}: {path} {problem}; re-export the bundle with `edgeae export`")

    def obj(self, v: Any, path: str) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise self.fail(path, f"must be an object, got {type(v).__name__}")
        return v

    def text(self, v: Any, path: str, choices: tuple[str, ...] | None = None) -> str:
        if not isinstance(v, str) or not v:
            raise self.fail(path, f"must be a non-empty string, got {v!r}")
        if choices and v not in choices:
            raise self.fail(path, f"must be one of {', '.join(choices)}, got {v!r}")
        return v

    def integer(self, v: Any, path: str, lo: int, hi: int | None = None) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(path, f"must be an integer, got {v!r}")
        if v < lo or (hi is not None and v > hi):
            raise self.fail(path, f"must be in {lo}..{hi if hi is not None else ''}, got {v}")
        return v

    def number(self, v: Any, path: str, positive: bool = False) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.fail(path, f"must be a finite number, got {v!r}")
        if positive and v <= 0:
            raise self.fail(path, f"must be > 0, got {v!r}")
        return float(v)

    def array(self, v: Any, path: str, length: int | None = None) -> list[Any]:
        if not isinstance(v, list):
            raise self.fail(path, f"must be a list, got {type(v).__name__}")
        if length is not None and len(v) != length:
            raise self.fail(path, f"must have {length} entries, got {len(v)}")
        return v

    def hexdigest(self, v: Any, path: str) -> str:
        s = self.text(v, path)
        if len(s) != 64 or any(c not in "0123456789abcdef" for c in s):
            raise self.fail(path, "must be a sha256 hex digest (64 lowercase hex digits)")
        return s

    # --- sections ---

    def manifest(self, d: Any) -> Manifest:
        d = self.obj(d, "manifest")
        if d.get("schema") != SCHEMA:
            raise self.fail("schema", f"must be {SCHEMA!r}, got {d.get('schema')!r} (not an edgeae bundle manifest)")
        version = d.get("version")
        if version != MANIFEST_VERSION:
            raise BundleError(f"{self.source}: manifest version {version!r} is not supported (this edgeae reads "
                              f"version {MANIFEST_VERSION}); use the edgeae release that exported it")
        req = {k: self.need(d, k) for k in ("name", "input", "graphs", "latent", "entropy", "fingerprint", "files")}
        latent = self.latent(req["latent"])
        entropy = self.entropy(req["entropy"], latent)
        files = self.files(req["files"])
        graphs = self.graphs(req["graphs"], files)
        int8 = d.get("int8")
        spec = self.input(req["input"])
        if spec.size_multiple and not (latent.stride and spec.size_multiple % latent.stride == 0):
            raise self.fail("latent.stride", f"must divide input.size_multiple = {spec.size_multiple} "
                            f"when the graphs take any size, got {latent.stride}")
        return Manifest(
            name=self.text(req["name"], "name"),
            input=spec,
            graphs=graphs,
            latent=latent,
            entropy=entropy,
            fingerprint=self.hexdigest(req["fingerprint"], "fingerprint"),
            files=files,
            model=self.obj(d.get("model", {}), "model"),
            quality=self.obj(d.get("quality", {}), "quality"),
            int8=None if int8 is None else self.obj(int8, "int8"),
            source=self.obj(d.get("source", {}), "source"),
            tools=self.obj(d.get("tools", {}), "tools"),
            extra={k: v for k, v in d.items() if k not in _KNOWN},
        )

    def need(self, d: dict[str, Any], key: str, path: str = "") -> Any:
        if key not in d:
            raise self.fail(f"{path}.{key}" if path else key, "is missing")
        return d[key]

    def input(self, d: Any) -> InputSpec:
        d = self.obj(d, "input")
        kind = self.text(d.get("kind", "image"), "input.kind", KINDS)
        raw = self.need(d, "shape", "input")
        shape_l = self.array(raw, "input.shape", 3) if kind == "image" else self.array(raw, "input.shape")
        if not 1 <= len(shape_l) <= 4:
            raise self.fail("input.shape", f"must have 1 to 4 dimensions, got {len(shape_l)}")
        shape = tuple(self.integer(v, f"input.shape[{i}]", 1, 1 << 16) for i, v in enumerate(shape_l))
        c = shape[0]
        order: str | None = None
        if kind == "image":
            order = self.text(self.need(d, "channel_order", "input"), "input.channel_order", tuple(CHANNELS))
            if CHANNELS[order] != c:
                raise self.fail("input.channel_order", f"is {order!r} but input.shape has {c} channels")
            layout = self.text(d.get("layout", "NCHW"), "input.layout", ("NCHW",))
        else:
            if "channel_order" in d:
                raise self.fail("input.channel_order", "is for images only (input.kind is 'tensor')")
            layout = self.text(d.get("layout", tensor_layout(len(shape))), "input.layout", (tensor_layout(len(shape)),))
        multiple = self.integer(d.get("size_multiple", 0), "input.size_multiple", 0, 1 << 12)
        if multiple and kind != "image":
            raise self.fail("input.size_multiple", "is for images only (input.kind is 'tensor')")
        return InputSpec(
            shape=shape, channel_order=order,
            scale=self.per_channel(self.need(d, "scale", "input"), "input.scale", c, positive=True),
            offset=self.per_channel(self.need(d, "offset", "input"), "input.offset", c),
            dtype=self.text(d.get("dtype", "float32"), "input.dtype", ("float32",)),
            layout=layout, kind=kind, size_multiple=multiple,
        )

    def per_channel(self, v: Any, path: str, channels: int, positive: bool = False) -> float | tuple[float, ...]:
        """One number, or a list of one number per channel."""
        if isinstance(v, list):
            self.array(v, path, channels)
            return tuple(self.number(x, f"{path}[{i}]", positive) for i, x in enumerate(v))
        return self.number(v, path, positive)

    def graphs(self, d: Any, files: dict[str, FileEntry]) -> dict[str, GraphEntry]:
        d = self.obj(d, "graphs")
        for role in ROLES:
            self.need(d, role, "graphs")
        extra = [r for r in d if r not in ROLES]
        if len(extra) > MAX_EXTRA_GRAPHS:
            raise self.fail("graphs", f"lists {len(extra)} extra graphs; at most {MAX_EXTRA_GRAPHS}")
        out = {}
        for role in (*ROLES, *extra):
            p = f"graphs.{role}"
            if not (isinstance(role, str) and role.isidentifier() and role.isascii() and len(role) <= 64):
                raise self.fail(p, "must be named by a short identifier (letters, digits, _)")
            g = self.obj(d[role], p)
            int8 = g.get("int8_file")
            entry = GraphEntry(
                file=self.text(self.need(g, "file", p), f"{p}.file"),
                input=self.text(self.need(g, "input", p), f"{p}.input"),
                output=self.text(self.need(g, "output", p), f"{p}.output"),
                opset=self.integer(self.need(g, "opset", p), f"{p}.opset", 1, 1000),
                int8_file=None if int8 is None else self.text(int8, f"{p}.int8_file"),
                digest=None if g.get("digest") is None else self.hexdigest(g["digest"], f"{p}.digest"),
                int8_digest=None if g.get("int8_digest") is None
                else self.hexdigest(g["int8_digest"], f"{p}.int8_digest"),
                halo=None if g.get("halo") is None else self.integer(g["halo"], f"{p}.halo", 0, MAX_HALO),
            )
            if entry.int8_digest is not None and entry.int8_file is None:
                raise self.fail(f"{p}.int8_digest", "is set but the graph has no int8_file")
            for key in ("file", "int8_file"):
                name = getattr(entry, key)
                if name is not None and name not in files:
                    raise self.fail(f"{p}.{key}", f"names {name!r}, which the files section does not list")
            out[role] = entry
        return out

    def latent(self, d: Any) -> LatentSpec:
        d = self.obj(d, "latent")
        shape = self.array(self.need(d, "shape", "latent"), "latent.shape")
        if not 1 <= len(shape) <= 6:
            raise self.fail("latent.shape", f"must have 1 to 6 dimensions, got {len(shape)}")
        shape_t = tuple(self.integer(v, f"latent.shape[{i}]", 1, 1 << 24) for i, v in enumerate(shape))
        if math.prod(shape_t) > MAX_LATENT_SYMBOLS:
            raise self.fail("latent.shape", f"has {math.prod(shape_t)} symbols per image, over the payload "
                            f"format's {MAX_LATENT_SYMBOLS}")
        axis = self.integer(self.need(d, "channel_axis", "latent"), "latent.channel_axis", 1, len(shape_t))
        stride = self.integer(d.get("stride", 0), "latent.stride", 0, 1 << 12)
        if stride and (len(shape_t) != 3 or axis != 1):
            raise self.fail("latent.stride", "needs a (C, H, W) latent with channel_axis 1")
        channels = shape_t[axis - 1]
        q = self.obj(self.need(d, "quantization", "latent"), "latent.quantization")
        p = "latent.quantization"
        bits = self.integer(self.need(q, "bits", p), f"{p}.bits", 0, MAX_LATENT_BITS)
        levels = self.integer(self.need(q, "levels", p), f"{p}.levels", 1, 1 << bits)
        offset = self.array(self.need(q, "offset", p), f"{p}.offset", channels)
        step = self.array(self.need(q, "step", p), f"{p}.step", channels)
        quant = Quantization(
            bits=bits, levels=levels,
            offset=tuple(self.number(v, f"{p}.offset[{i}]") for i, v in enumerate(offset)),
            step=tuple(self.number(v, f"{p}.step[{i}]", positive=True) for i, v in enumerate(step)),
        )
        return LatentSpec(shape=shape_t, channel_axis=axis, quantization=quant, stride=stride)

    def entropy(self, d: Any, latent: LatentSpec) -> EntropySpec:
        d = self.obj(d, "entropy")
        model = self.text(d.get("model", "factorized"), "entropy.model", ENTROPY_MODELS)
        coder = self.text(self.need(d, "coder", "entropy"), "entropy.coder", ("range",))
        precision = self.integer(self.need(d, "precision", "entropy"), "entropy.precision", 1, MAX_PRECISION)
        if model == "hyperprior":
            if latent.channel_axis != 1 or len(latent.shape) != 3:
                raise self.fail("entropy.model", "hyperprior needs a (C, H, W) latent with channel_axis 1")
            zd = self.obj(self.need(d, "z", "entropy"), "entropy.z")
            y = self.tables(self.need(d, "y", "entropy"), "entropy.y", precision)
            if "qualities" in d:
                if "tables" in zd:
                    raise self.fail("entropy.z.tables", "a multi-quality bundle keeps z's tables in each quality")
                qualities, default = self.qualities(d, zd, latent.channels, precision)
                z = TableFamily((), (), stride=qualities[0].z.stride)
                zs = [q.z for q in qualities]
            else:
                z, qualities, default = self.tables(zd, "entropy.z", precision), (), 0
                zs = [z]
            if len({len(t.offsets) for t in zs}) != 1:
                raise self.fail("entropy.qualities", "every quality needs as many z tables (one per z channel)")
            if sum(sum(map(len, t.frequencies)) for t in [*zs, y]) > MAX_TABLE_ENTRIES:
                raise self.fail("entropy", f"tables hold more than {MAX_TABLE_ENTRIES} entries")
            return EntropySpec(coder=coder, precision=precision, frequencies=(), model=model, z=z, y=y,
                               qualities=qualities, default_quality=default)
        if latent.channels * latent.quantization.levels > MAX_TABLE_ENTRIES:
            raise self.fail("entropy.frequencies", f"hold more than {MAX_TABLE_ENTRIES} entries")
        rows = self.array(self.need(d, "frequencies", "entropy"), "entropy.frequencies", latent.channels)
        levels = latent.quantization.levels
        if levels > MAX_TABLE:
            raise self.fail("latent.quantization.levels", f"the range coder takes at most {MAX_TABLE} symbols "
                            f"(2**24 - 2), got {levels}")
        out = [self.row(row, f"entropy.frequencies[{c}]", precision, levels) for c, row in enumerate(rows)]
        return EntropySpec(coder=coder, precision=precision, frequencies=tuple(out))

    def qualities(self, d: dict[str, Any], zd: dict[str, Any], channels: int,
                  precision: int) -> tuple[tuple[QualitySpec, ...], int]:
        """entropy.qualities of a multi-quality hyperprior and entropy.default_quality (docs/MANIFEST.md)."""
        rows = self.array(d["qualities"], "entropy.qualities")
        if not 2 <= len(rows) <= MAX_QUALITIES:
            raise self.fail("entropy.qualities", f"must hold 2 to {MAX_QUALITIES} operating points, got {len(rows)}")
        stride = self.need(zd, "stride", "entropy.z")
        out = []
        for i, q in enumerate(rows):
            p = f"entropy.qualities[{i}]"
            q = self.obj(q, p)
            gain = self.array(self.need(q, "gain", p), f"{p}.gain", channels)
            zq = self.obj(self.need(q, "z", p), f"{p}.z")
            out.append(QualitySpec(
                lmbda=self.number(self.need(q, "lmbda", p), f"{p}.lmbda", positive=True),
                gain=tuple(self.number(v, f"{p}.gain[{c}]", positive=True) for c, v in enumerate(gain)),
                z=self.tables({"stride": stride, "tables": self.need(zq, "tables", f"{p}.z")}, f"{p}.z", precision)))
        default = self.integer(self.need(d, "default_quality", "entropy"), "entropy.default_quality", 1, len(out))
        return tuple(out), default

    def row(self, row: Any, path: str, precision: int, length: int | None = None) -> tuple[int, ...]:
        """A frequency row: ints >= 1 summing to 2**precision."""
        row = self.array(row, path, length)
        if not all(type(v) is int and v >= 1 for v in row):  # noqa: E721 (bool is not a frequency)
            bad = next(i for i, v in enumerate(row) if type(v) is not int or v < 1)  # noqa: E721
            raise self.fail(f"{path}[{bad}]", f"must be an integer >= 1, got {row[bad]!r}")
        if sum(row) != 1 << precision:
            raise self.fail(path, f"must sum to 2**precision = {1 << precision}, got {sum(row)}")
        return tuple(row)

    def tables(self, d: Any, path: str, precision: int) -> TableFamily:
        """entropy.z / entropy.y of a hyperprior: conditional tables with an escape (docs/MANIFEST.md)."""
        d = self.obj(d, path)
        rows = self.array(self.need(d, "tables", path), f"{path}.tables")
        if not 1 <= len(rows) <= 1 << 16:
            raise self.fail(f"{path}.tables", f"must hold 1 to {1 << 16} tables, got {len(rows)}")
        offsets, freqs = [], []
        for t, table in enumerate(rows):
            p = f"{path}.tables[{t}]"
            table = self.obj(table, p)
            offsets.append(self.integer(self.need(table, "offset", p), f"{p}.offset", -(1 << 30), 1 << 30))
            row = self.row(self.need(table, "frequencies", p), f"{p}.frequencies", precision)
            if len(row) < 2:
                raise self.fail(f"{p}.frequencies", "needs at least one value and the escape (2 entries)")
            freqs.append(row)
        if path.endswith(".z"):
            stride = self.integer(self.need(d, "stride", path), f"{path}.stride", 1, 1 << 12)
            return TableFamily(tuple(offsets), tuple(freqs), stride=stride)
        means = d.get("means", False)
        if not isinstance(means, bool):
            raise self.fail(f"{path}.means", f"must be true or false, got {means!r}")
        phases = self.integer(d.get("mean_phases", 1), f"{path}.mean_phases", 1, 64)
        if phases > 1 and not means:
            raise self.fail(f"{path}.mean_phases", "needs means: true")
        if len(rows) % phases:
            raise self.fail(f"{path}.tables", f"must hold a table per scale and mean phase ({phases}), got {len(rows)}")
        scales = self.array(d.get("scales", []), f"{path}.scales")
        if scales and len(scales) * phases != len(rows):
            raise self.fail(f"{path}.scales", f"must have one scale per {phases} table(s) ({len(rows)}), got {len(scales)}")
        return TableFamily(tuple(offsets), tuple(freqs), means=means, mean_phases=phases,
                           scales=tuple(self.number(v, f"{path}.scales[{i}]", positive=True)
                                        for i, v in enumerate(scales)))

    def files(self, d: Any) -> dict[str, FileEntry]:
        d = self.obj(d, "files")
        out = {}
        for name, entry in d.items():
            p = f"files[{name!r}]"
            entry = self.obj(entry, p)
            out[name] = FileEntry(sha256=self.hexdigest(self.need(entry, "sha256", p), f"{p}.sha256"),
                                  bytes=self.integer(self.need(entry, "bytes", p), f"{p}.bytes", 0, MAX_FILE_BYTES))
        return out
