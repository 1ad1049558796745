"""`edgeae.export`: any PyTorch autoencoder -> a verified bundle. The one exporter; run directories
(`export_run` in build.py) and the CLI are adapters over it.

    modules --probe--> shapes, adapters --trace--> encoder.onnx, decoder.onnx (+ an entropy model's graphs)
      --encoder on calibration data--> latent quantisation + entropy tables (calibrated, or the model's own)
      --verify--> every graph against PyTorch at batch 1, a larger batch (and a second size for any-size graphs)
      --quality--> PSNR (images) / SNR (tensors) as devices run it; optional int8 twins with their dB delta
      --manifest--> validated by the runtime's own loader, written last; all in a temporary folder renamed
                    into place, so a failure leaves nothing in `out`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from edgeae import __version__
from edgeae.bundling import calibrate, graphs
from edgeae.bundling.halo import graph_halo
from edgeae.bundling.inputs import InputSpec
from edgeae.bundling.int8 import median_latency_us, quantize_graph
from edgeae.bundling.protocol import EntropySection, ExtraGraph, find_entropy_model
from edgeae.bundling.spec import DEFAULT_OPSET, MANIFEST_VERSION, SUPPORTED_OPSETS, GraphSpec, graph_specs
from edgeae.bundling.verify import GraphCheck, check_graph, raise_failures
from edgeae.errors import (
    BundleError,
    CalibrationError,
    EdgeaeError,
    ExportError,
    InputError,
    NonFiniteError,
    ShapeMismatchError,
    TraceError,
)
from edgeae.evaluate.metrics import mean_psnr
from edgeae.evaluate.metrics import psnr as psnr_per_image
from edgeae.runtime.bundle import sha256_file
from edgeae.runtime.devices import Int8Settings
from edgeae.runtime.files import find_files
from edgeae.runtime.images import IMAGE_SUFFIXES, ImageAdapter, TensorAdapter, input_adapter
from edgeae.runtime.manifest import InputSpec as ManifestInput
from edgeae.runtime.manifest import LatentSpec, Manifest, Quantization
from edgeae.runtime.quantize import Quantizer
from edgeae.runtime.session import make_session
from edgeae.train.rundir import AtomicDir, write_json

MAX_CALIBRATION = 4096
MAX_VALIDATION = 512
VERIFY_BATCH = 7  # the larger batch every graph is checked at (besides batch 1)
MAX_INT8_DROP_DB = 0.5


@dataclass
class ExportResult:
    """What `edgeae.export` wrote: the bundle folder, its manifest, every graph check; `print(result)`."""

    path: Path
    manifest: dict[str, Any]
    checks: list[GraphCheck] = field(default_factory=list)

    @property
    def quality(self) -> dict[str, Any]:
        return self.manifest.get("quality", {})

    @property
    def int8(self) -> dict[str, Any] | None:
        return self.manifest.get("int8")

    @property
    def int8_verdicts(self) -> dict[str, dict[str, Any]]:
        """Per int8 graph: its dB delta against fp32 (negative = worse), the limit, and whether it is faster."""
        if not self.int8:
            return {}
        metric = self.quality.get("metric", "psnr")
        out = {}
        for role, g in self.int8["graphs"].items():
            drop = g[f"{metric}_drop_db"]
            out[role] = {"delta_db": -drop, "max_drop_db": self.int8["max_drop_db"],
                         "within_limit": drop <= self.int8["max_drop_db"], "faster": g.get("int8_faster")}
        return out

    def __str__(self) -> str:
        from edgeae.runtime.summary import summarize

        lines = [f"bundle      {self.path}", summarize(self.manifest), "checks      (max error vs PyTorch)"]
        lines += [f"  {c}" for c in self.checks]
        return "\n".join(lines)


def export(encoder: nn.Module | None = None, decoder: nn.Module | None = None, *,
           out: str | os.PathLike[str], input: InputSpec, calibration: Any, validation: Any = None,
           model: nn.Module | None = None, encode: str | None = None, decode: str | None = None,
           latent_output: int | str | None = None, decoder_output: int | str | None = None,
           latent_bits: int = 8, int8: bool | str | Sequence[str] = False, opset: int = DEFAULT_OPSET,
           atol: float = 1e-4,
           rtol: float = 1e-3, entropy: Any = None, name: str | None = None, device: str | None = None,
           max_int8_drop_db: float = MAX_INT8_DROP_DB, calibration_samples: int = 256,
           int8_keep_fp32: dict[str, tuple[str, ...]] | None = None, measure_speed: bool = True,
           force: bool = False, model_info: dict[str, Any] | None = None,
           source: dict[str, Any] | None = None) -> ExportResult:
    """Export a PyTorch autoencoder as a verified edgeae bundle (docs/EXPORT.md).

    encoder, decoder: two modules; or `model` plus the names of its encode/decode methods or submodules
        (`encode="encode"`; default: `encoder`/`decoder` submodules, else `encode`/`decode` methods).
    latent_output / decoder_output: which output is the latent when the encoder returns several (a VAE's
        `(mu, logvar)`: 0), by index or key; only that path is exported.
    input: an `edgeae.InputSpec` (shape, normalisation, any-size).
    calibration: images as an array ((N, C, H, W) / (N, H, W[, C]), uint8 or float [0, 1]), a tensor, an
        iterable of arrays or (x, label) batches, a folder of image files or an .npy file; tensors: raw floats
        (N, *shape). validation: the same kinds; default: a held-out fifth of calibration.
    latent_bits: uniform levels per latent channel (2**bits), unless the model brings its own entropy model
        (`edgeae_entropy`, docs/EXPORT.md; or pass one as `entropy=`).
    int8: also write int8 (QDQ) twins, calibrated on the calibration data, each refused if it loses more than
        `max_int8_drop_db` against fp32; True for both graphs, or the roles to quantise ("encoder": an int8
        encoder with an fp32 decoder). atol / rtol: fp32 parity with PyTorch, element-wise.
    int8_keep_fp32: per role, "first" / "last" compute node left in fp32; a model may bring its own default
        (an `int8_keep_fp32` attribute: the hyperprior's encoder keeps its last layer), which a role given
        here replaces (`{"encoder": ()}`: quantise every node).
    """
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(f"opset {opset} is not supported; use {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}")
    if not isinstance(input, InputSpec):
        raise ExportError(f"input must be an edgeae.InputSpec, got {type(input).__name__}")
    try:
        input.dims  # noqa: B018 (validates the shape)
        manifest_input = input.to_manifest()
    except ValueError as exc:
        raise ExportError(f"input: {exc}") from None
    owner = model
    enc, dec, adapters = _resolve(encoder, decoder, model, encode, decode, latent_output, decoder_output)
    adapter = input_adapter(manifest_input)
    train = load_data(calibration, adapter, "calibration", MAX_CALIBRATION)
    if validation is None:
        train, val = _held_out(train)
    else:
        val = load_data(validation, adapter, "validation", MAX_VALIDATION)
    enc, dec, shapes = _probe(enc, dec, input, val, adapters)
    multiple, stride = _any_size(input, shapes)
    if multiple:
        manifest_input = input.to_manifest(size_multiple=multiple)
    provider = entropy if entropy is not None else find_entropy_model(owner, encoder)
    params = {id(p): p for m in (enc, dec) for p in m.parameters()}
    info = {"family": "custom", "encoder": _qualname(enc), "decoder": _qualname(dec),
            "parameters": int(sum(p.numel() for p in params.values())),
            **({"adapters": adapters} if adapters else {}), **(model_info or {})}
    job = Job(encoder=enc, decoder=dec, input=manifest_input, train=train, val=val, latent_bits=latent_bits,
              int8_roles=int8_roles(int8), opset=opset, atol=atol, rtol=rtol, entropy=provider, stride=stride,
              device=device, max_int8_drop_db=max_int8_drop_db, calibration_samples=calibration_samples,
              int8_keep_fp32=_keep_fp32(owner, int8_keep_fp32), measure_speed=measure_speed,
              name=name or Path(out).name, model_info=info, source=source or {"exported_by": "edgeae.export"})
    return run_job(job, Path(out), force)


# --- the job: everything a bundle is made of, whoever asked for it ------------------------------------


@dataclass
class Job:
    encoder: nn.Module
    decoder: nn.Module
    input: ManifestInput
    train: np.ndarray  # graph-space calibration data (N, *input.shape)
    val: np.ndarray  # graph-space validation data
    name: str
    model_info: dict[str, Any]
    source: dict[str, Any]
    latent_bits: int = 8
    int8_roles: tuple[str, ...] = ()  # graphs that get an int8 twin
    opset: int = DEFAULT_OPSET
    atol: float = 1e-4
    rtol: float = 0.0
    entropy: Any = None  # an object with edgeae_entropy (protocol.py), or None: calibrated tables
    stride: int = 0  # any-size bundles: the latent's spatial stride
    device: str | None = None
    max_int8_drop_db: float = MAX_INT8_DROP_DB
    calibration_samples: int = 256
    int8_keep_fp32: dict[str, tuple[str, ...]] | None = None
    measure_speed: bool = True

    @property
    def int8(self) -> bool:
        return bool(self.int8_roles)

    @property
    def tensor(self) -> bool:
        return self.input.kind == "tensor"


def int8_roles(int8: bool | str | Sequence[str]) -> tuple[str, ...]:
    """`int8=` as the roles it quantises: True = both graphs, False = none, or a role / roles."""
    if isinstance(int8, bool):
        return ("encoder", "decoder") if int8 else ()
    roles = (int8,) if isinstance(int8, str) else tuple(int8)
    bad = [r for r in roles if r not in ("encoder", "decoder")]
    if bad:
        raise ExportError(f"int8 takes True/False or the roles encoder / decoder, got {', '.join(map(repr, bad))}")
    return tuple(r for r in ("encoder", "decoder") if r in roles)


def run_job(job: Job, out: Path, force: bool = False) -> ExportResult:
    """Build the bundle in a temporary folder beside `out`; rename it into place only when all checks pass."""
    with AtomicDir(out, overwrite=force) as tmp:
        manifest, checks = _build(job, tmp)
    return ExportResult(path=out, manifest=manifest, checks=checks)


def _build(job: Job, tmp: Path) -> tuple[dict[str, Any], list[GraphCheck]]:
    specs = graph_specs(job.opset, tensor=job.tensor, dynamic_size=job.input.dynamic_size, atol=job.atol,
                        rtol=job.rtol)
    modules = {"encoder": job.encoder, "decoder": job.decoder}
    val = job.val
    example_latent = graphs.torch_run(job.encoder, _at_least_two(val[:2]))
    examples = {"encoder": torch.from_numpy(_at_least_two(val[:2])), "decoder": torch.from_numpy(example_latent)}
    protos = {role: graphs.export_graph(modules[role], spec, examples[role]) for role, spec in specs.items()}
    for role, spec in specs.items():
        graphs.save(protos[role], tmp / spec.file)

    latents = run_graph(tmp / specs["encoder"].file, job.train)
    _finite(latents, "the exported encoder's latents of the calibration data")
    latent, entropy, section = latent_model(job.entropy, latents, job.latent_bits, job.stride)
    if section and section.size_multiple and job.input.dynamic_size:
        job.input = _entropy_multiple(job.input, section.size_multiple)
    extras = _extra_graphs(section.graphs if section else [], job.opset)
    meta = {"edgeae.manifest_version": str(MANIFEST_VERSION)}  # the fingerprint joins it once int8 is done
    for role, proto in [*protos.items(), *extras.items()]:
        graphs.set_metadata(proto, {**meta, "edgeae.role": role})
        graphs.save(proto, tmp / f"{role}.onnx" if role in extras else tmp / specs[role].file)

    val_latent = graphs.torch_run(job.encoder, val)
    checks = _verify(job, specs, modules, tmp, val, val_latent)
    checks += [_check_extra(g, tmp) for g in (section.graphs if section else [])]
    raise_failures(checks)  # parity first: quality figures of a graph that is wrong mean nothing
    # Quality is judged the way devices run: encoder -> the runtime's latent quantisation -> decoder.
    q = quantizer(latent)

    def requant(z: np.ndarray) -> np.ndarray:
        return q.dequantize(q.quantize(z))

    y = run_graph(tmp / specs["encoder"].file, val)
    scorer = Scorer(input_adapter(job.input), val)
    quality = _quality(job, tmp, specs, val, y, requant, scorer)
    int8 = _int8(job, specs, tmp, y, requant, latent, quality, checks, modules, meta, scorer) \
        if job.int8 else None
    raise_failures(checks)
    fp, int8_digests = _stamp_fingerprint(job, specs, protos, extras, latent, entropy, meta, tmp)
    for role, entry in (int8 or {}).get("graphs", {}).items():  # the sizes as written, metadata included
        b32, b8 = (tmp / specs[role].file).stat().st_size, (tmp / specs[role].int8_file).stat().st_size
        entry.update(bytes_fp32=b32, bytes_int8=b8, size_ratio=b8 / b32)
    if section and section.model:
        job.model_info = {**job.model_info, "entropy_model": section.model}
    # Round-trip through the runtime's validator: the exporter never writes a manifest the runtime refuses.
    raw = _manifest(job, specs, latent, entropy, fp, quality, int8, checks, section.graphs if section else [], tmp,
                    int8_digests)
    try:
        manifest = Manifest.from_dict(raw).to_dict()
    except BundleError as exc:
        raise ExportError(f"the bundle would not load on the runtime: {exc}") from None
    write_json(tmp / "manifest.json", manifest)
    return manifest, checks


# --- modules: which callables are the encoder and decoder --------------------------------------------


class _Method(nn.Module):
    """A model's encode/decode method as a module (the owner is a submodule, so its weights export)."""

    def __init__(self, owner: nn.Module, method: str) -> None:
        super().__init__()
        self.owner = owner
        self.method = method

    def forward(self, x: torch.Tensor) -> Any:
        return getattr(self.owner, self.method)(x)


class _Pick(nn.Module):
    """One output of a module that returns several: only that path is traced."""

    def __init__(self, inner: nn.Module, key: int | str) -> None:
        super().__init__()
        self.inner = inner
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _select(self.inner(x), self.key)


class _Flatten(nn.Module):
    """An encoder that takes flat (N, C*H*W) vectors, fed NCHW images."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.flatten(1))


class _Unflatten(nn.Module):
    """A decoder that gives flat (N, prod(shape)) vectors, reshaped to the input's shape."""

    def __init__(self, inner: nn.Module, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.inner = inner
        self.shape = tuple(shape)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.inner(z).reshape(-1, *self.shape)


def _select(out: Any, key: int | str) -> Any:
    try:
        if isinstance(out, (tuple, list)):
            return out[int(key)] if not isinstance(key, str) else getattr(out, key)
        if isinstance(out, dict):
            return out[key]
        return getattr(out, str(key))
    except (IndexError, KeyError, AttributeError, ValueError, TypeError):
        raise ExportError(f"the model's output has no {key!r} (it returns {_describe(out)}); pass the index or "
                          "key of the latent") from None


def _describe(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return f"a tensor {tuple(out.shape)}"
    if isinstance(out, (tuple, list)):
        return f"{len(out)} outputs (" + ", ".join(_describe(o) for o in out) + ")"
    if isinstance(out, dict):
        return "a dict with keys " + ", ".join(map(repr, out))
    return type(out).__name__


def _keep_fp32(model: Any, given: dict[str, tuple[str, ...]] | None) -> dict[str, tuple[str, ...]]:
    """The nodes each int8 role leaves in fp32: the model's own default, each role given replacing it."""
    default = getattr(model, "int8_keep_fp32", None)
    return {**(dict(default) if isinstance(default, dict) else {}), **(given or {})}


def _member(model: nn.Module, name: str | None, defaults: tuple[str, ...], what: str) -> nn.Module:
    names = (name,) if name else defaults
    for n in names:
        attr = getattr(model, n, None)
        if isinstance(attr, nn.Module):
            return attr
        if callable(attr):
            return _Method(model, n)
    raise ExportError(f"{type(model).__name__} has no {' or '.join(map(repr, names))} submodule or method; pass "
                      f"{what}='name of its {what} method or submodule' (--{what[:-1]}er-attr on the CLI)")


def _resolve(encoder: Any, decoder: Any, model: Any, encode: str | None, decode: str | None,
             latent_output: Any, decoder_output: Any) -> tuple[nn.Module, nn.Module, list[str]]:
    if model is not None:
        if encoder is not None or decoder is not None:
            raise ExportError("give either encoder= and decoder=, or model= with encode=/decode= names, not both")
        if not isinstance(model, nn.Module):
            raise ExportError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        model.eval()
        # a model may name what exports itself (`edgeae_encoder`: a variable-rate model's unscaled transform)
        encoder = _member(model, encode, ("edgeae_encoder", "encoder", "encode"), "encode")
        decoder = _member(model, decode, ("edgeae_decoder", "decoder", "decode"), "decode")
    for what, m in (("encoder", encoder), ("decoder", decoder)):
        if not isinstance(m, nn.Module):
            raise ExportError(f"{what} must be a torch.nn.Module, got {type(m).__name__}; pass encoder= and "
                              "decoder=, or model= with encode=/decode= names")
    adapters = []
    if latent_output is not None:
        encoder, adapters = _Pick(encoder, latent_output), [f"latent = encoder output {latent_output!r}"]
    if decoder_output is not None:
        decoder = _Pick(decoder, decoder_output)
        adapters.append(f"reconstruction = decoder output {decoder_output!r}")
    return encoder.eval(), decoder.eval(), adapters


def _qualname(m: nn.Module) -> str:
    while isinstance(m, (_Pick, _Flatten, _Unflatten)):
        m = m.inner
    if isinstance(m, _Method):
        return f"{type(m.owner).__module__}.{type(m.owner).__qualname__}.{m.method}"
    return f"{type(m).__module__}.{type(m).__qualname__}"


def _call(module: nn.Module, x: np.ndarray) -> Any:
    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(x, np.float32)))


def _probe(enc: nn.Module, dec: nn.Module, spec: InputSpec, val: np.ndarray,
           adapters: list[str]) -> tuple[nn.Module, nn.Module, dict[str, tuple[int, ...]]]:
    """Run both modules once in PyTorch: typed errors for what cannot work, adapters for flat MLPs."""
    dims = spec.dims
    x = _at_least_two(val[:2])
    try:
        z = _call(enc, x)
    except Exception as exc:  # the user's forward
        flat = None
        if spec.resolved_kind == "image":
            try:
                flat = _call(enc, x.reshape(len(x), -1))
            except Exception:  # noqa: BLE001 - the NCHW error is the one to report
                flat = None
        if flat is None:
            raise TraceError(f"the encoder fails on a {tuple(x.shape)} float32 batch: {type(exc).__name__}: "
                             f"{graphs._first(exc)}; check input= matches what the model takes") from None
        enc, z = _Flatten(enc), flat
        adapters.append("encoder takes flat (N, C*H*W) input")
    if not isinstance(z, torch.Tensor):
        raise ShapeMismatchError(f"the encoder returns {_describe(z)}; pass latent_output= with the index or "
                                 "key of the latent (a VAE's mean: 0), so only that path is exported")
    if z.ndim < 2 or z.shape[0] != len(x) or not 1 <= z.ndim - 1 <= 6:
        raise ShapeMismatchError(f"the encoder gives a latent of shape {tuple(z.shape)} for {len(x)} inputs; "
                                 "the runtime codes latents (N, D), (N, C, H, W) or (N, C, ...) with N first")
    _finite(z.numpy(), "the encoder's latent (PyTorch) on validation data")
    try:
        r = _call(dec, z.numpy())
    except Exception as exc:
        raise TraceError(f"the decoder fails on the encoder's {tuple(z.shape)} latent: {type(exc).__name__}: "
                         f"{graphs._first(exc)}") from None
    if not isinstance(r, torch.Tensor):
        raise ShapeMismatchError(f"the decoder returns {_describe(r)}; pass decoder_output= with the index or "
                                 "key of the reconstruction")
    want = (len(x), *dims)
    if tuple(r.shape) != want and tuple(r.shape) == (len(x), int(np.prod(dims))):
        dec, r = _Unflatten(dec, dims), r.reshape(want)
        adapters.append("decoder gives flat (N, C*H*W) output")
    if tuple(r.shape) != want:
        raise ShapeMismatchError(f"the decoder gives {tuple(r.shape)} for a {tuple(z.shape)} latent but the input "
                                 f"is {want}; a decoder must give back the input's shape (check its upsampling, "
                                 "padding or final layer, or input=)")
    _finite(r.numpy(), "the decoder's reconstruction (PyTorch) of validation data")
    return enc, dec, {"latent": tuple(z.shape[1:]), "input": tuple(dims)}


def _any_size(spec: InputSpec, shapes: dict[str, tuple[int, ...]]) -> tuple[int, int]:
    """(size_multiple, latent stride) of an any-size export, (0, 0) for a fixed-size one."""
    if not spec.dynamic_size:
        return 0, 0
    _, h, w = shapes["input"]
    lat = shapes["latent"]
    if len(lat) != 3 or h % lat[1] or w % lat[2] or h // lat[1] != w // lat[2]:
        raise ShapeMismatchError(f"dynamic_size needs a (C, H/s, W/s) latent of a fully convolutional model; the "
                                 f"encoder gives {lat} for {h}x{w} input; export without dynamic_size")
    stride = h // lat[1]
    multiple = spec.size_multiple or stride
    if multiple % stride:
        raise ExportError(f"size_multiple {multiple} must be a multiple of the latent stride {stride}")
    if h % multiple or w % multiple:
        raise ExportError(f"the reference size {h}x{w} must be a multiple of size_multiple {multiple}; choose "
                          "calibration images of such a size")
    return multiple, stride


def _entropy_multiple(spec: ManifestInput, need: int) -> ManifestInput:
    """An entropy model that downsamples the latent again (a hyperprior's z) needs sizes that are a multiple
    of its own stride too: the bundle's size_multiple becomes the least common multiple."""
    multiple = math.lcm(spec.size_multiple, int(need))
    _, h, w = spec.shape
    if h % multiple or w % multiple:
        raise ExportError(f"the entropy model needs sizes that are multiples of {multiple}, but the reference "
                          f"size is {h}x{w}; choose calibration images of such a size")
    return dataclasses.replace(spec, size_multiple=multiple)


def _at_least_two(x: np.ndarray) -> np.ndarray:
    """Tracing and the dynamic-batch check need a batch > 1."""
    return x if len(x) >= 2 else np.concatenate([x, x])


def _finite(a: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(a.reshape(len(a), -1)).all(axis=1) if a.size else np.zeros(0, bool)
    if bad.any():
        raise NonFiniteError(f"{what} holds NaN or infinity (item {int(np.nonzero(bad)[0][0])} of {len(a)}); check "
                             "the model for divisions by zero, log/sqrt of negatives or overflow")


# --- data: calibration / validation in any form -> graph-space float32 --------------------------------


def load_data(data: Any, adapter: ImageAdapter | TensorAdapter, what: str, limit: int) -> np.ndarray:
    """Calibration or validation data -> graph-space float32 (N, *input.shape) through the runtime's own
    input adapter (so export sees what devices feed the graph). CalibrationError names what is wrong."""
    tensors = isinstance(adapter, TensorAdapter)
    try:
        if isinstance(data, (str, os.PathLike)):
            arr = _from_path(Path(data), adapter, what, limit)
        elif isinstance(data, torch.Tensor):
            arr = _convert(_subsample(data.detach().cpu().numpy(), limit), adapter, what)
        elif isinstance(data, np.ndarray):
            arr = _convert(_subsample(data, limit), adapter, what)
        elif isinstance(data, Iterable):
            arr = _from_iterable(data, adapter, what, limit)
        else:
            raise CalibrationError(f"{what} data must be an array, a tensor, an iterable of them, a folder of "
                                   f"images or an .npy file; got {type(data).__name__}")
    except InputError as exc:
        raise CalibrationError(f"{what} data: {exc}") from None
    if not len(arr):
        raise CalibrationError(f"{what} data is empty; give at least 2 {'tensors' if tensors else 'images'}")
    return np.ascontiguousarray(_subsample(arr, limit), np.float32)


def _subsample(a: np.ndarray, limit: int) -> np.ndarray:
    """At most `limit` items of a batch, a seeded random choice kept in order (a single item passes)."""
    if a.ndim < 2 or len(a) <= limit:
        return a
    return a[np.sort(np.random.default_rng(0).permutation(len(a))[:limit])]


def _convert(a: np.ndarray, adapter: ImageAdapter | TensorAdapter, what: str) -> np.ndarray:
    if isinstance(adapter, TensorAdapter):
        if a.ndim != len(adapter.shape) + 1 or a.shape[1:] != adapter.shape:
            raise CalibrationError(f"{what} tensors have shape {a.shape[1:]} but the model takes {adapter.shape}; "
                                   f"pass (N, {', '.join(map(str, adapter.shape))}) float arrays")
        return adapter(a)
    try:
        return adapter(a)
    except InputError as exc:
        if not str(exc).startswith("image array of shape"):
            raise
        item = a.shape[1:] if a.ndim >= 3 else a.shape
        raise CalibrationError(f"{what} images have shape {item} but the model takes (C, H, W) = {adapter.chw}; "
                               f"pass {what} data of the model's input shape: (N, C, H, W), (N, H, W, C)"
                               + (" or (N, H, W)" if adapter.chw[0] == 1 else "")) from None


def _from_path(p: Path, adapter: ImageAdapter | TensorAdapter, what: str, limit: int) -> np.ndarray:
    if p.is_dir():
        if isinstance(adapter, TensorAdapter):
            raise CalibrationError(f"{what} data {p} is a folder; tensor inputs take an .npy file (N, *shape)")
        def none_found(folder: Path, reason: str) -> None:
            raise CalibrationError(f"{what} folder {folder} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")

        files = [f.source for f in find_files([p], IMAGE_SUFFIXES, skip=none_found)]
        if len(files) > limit:
            files = [files[i] for i in np.sort(np.random.default_rng(0).permutation(len(files))[:limit])]
        return np.concatenate([adapter(f) for f in files])
    if p.suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CalibrationError(f"cannot read {what} data {p}: {exc}") from None
        return _convert(arr, adapter, what)
    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and isinstance(adapter, ImageAdapter):
        return adapter(p)
    raise CalibrationError(f"{what} data {p} is not a folder of images or an .npy file"
                           + ("" if p.exists() else " (it does not exist)"))


def _from_iterable(data: Iterable, adapter: ImageAdapter | TensorAdapter, what: str, limit: int) -> np.ndarray:
    parts, n = [], 0
    for item in data:
        if isinstance(item, (tuple, list)) and item and not isinstance(item[0], (int, float)):
            item = item[0]  # (x, label) batches of a DataLoader
        if isinstance(item, torch.Tensor):
            item = item.detach().cpu().numpy()
        if not isinstance(item, np.ndarray) and not isinstance(item, (str, os.PathLike)):
            item = np.asarray(item)
        x = adapter(item) if not isinstance(item, np.ndarray) else _batch(item, adapter, what)
        parts.append(x)
        n += len(x)
        if n >= limit:
            break
    if not parts:
        raise CalibrationError(f"{what} data is empty; give at least 2 items")
    return np.concatenate(parts)


def _batch(a: np.ndarray, adapter: ImageAdapter | TensorAdapter, what: str) -> np.ndarray:
    if isinstance(adapter, TensorAdapter):
        return adapter(a)  # one item or a batch
    return _convert(a, adapter, what)


def _held_out(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Default validation: the last fifth of the calibration data (at most MAX_VALIDATION, at least 1)."""
    if len(data) < 2:
        raise CalibrationError(f"calibration data holds {len(data)} item; give at least 2 (or validation= too)")
    n = max(1, min(MAX_VALIDATION, len(data) // 5))
    return data[:-n], data[-n:]


# --- latent quantisation and entropy model -------------------------------------------------------------


def latent_model(provider: Any, latents: np.ndarray, bits: int,
                 stride: int = 0) -> tuple[dict[str, Any], dict[str, Any], EntropySection | None]:
    """(manifest latent section, entropy section, the provider's EntropySection or None).

    With a provider (docs/EXPORT.md, "Bring your own entropy model") its quantisation and tables; without,
    per-channel min/max calibration to 2**bits levels and histogram tables."""
    axis = 1
    section = None
    if provider is not None:
        try:
            section = EntropySection.from_any(provider.edgeae_entropy(latents, calibrate.PRECISION))
            for g in section.graphs:
                g.validate()
        except (TypeError, ValueError) as exc:
            raise ExportError(f"the model's entropy model: {exc}") from None
        q = section.quantization
        try:
            quant: dict[str, Any] = {"bits": int(q["bits"]), "levels": int(q["levels"]),
                                     "offset": [float(v) for v in q["offset"]],
                                     "step": [float(v) for v in q["step"]]}
        except (KeyError, TypeError, ValueError) as exc:
            raise ExportError(f"the model's entropy model: quantization needs bits, levels, offset and step "
                              f"({exc!r})") from None
        entropy = dict(section.entropy)
    else:
        try:
            quant = calibrate.calibrate_quantization(latents, bits)
        except ValueError as exc:
            raise ExportError(str(exc)) from None
        symbols = quantizer({"shape": latents.shape[1:], "channel_axis": axis, "quantization": quant}).quantize(latents)
        entropy = calibrate.histogram_tables(symbols, quant["levels"], axis)
    latent: dict[str, Any] = {"shape": list(latents.shape[1:]), "channel_axis": axis}
    if stride:
        latent["stride"] = stride
    latent["quantization"] = quant
    return latent, entropy, section


def latent_grid(latent: dict[str, Any], activation_type: str = "uint8") -> tuple[float, int] | None:
    """(scale, zero point) of an 8-bit grid holding every channel's quantisation points exactly, or None.

    It exists when all channels share one step s, every offset is a whole number of steps, and the union of
    the channels' ranges spans at most 256 steps (the learned codec: s = 1, offsets integers). The int8 encoder
    then quantises its output onto the latent grid itself, so its output quantisation costs nothing."""
    q = latent["quantization"]
    steps, offsets = np.asarray(q["step"], np.float64), np.asarray(q["offset"], np.float64)
    s = float(steps[0])
    units = offsets / s
    if not (np.all(steps == s) and np.allclose(units, np.round(units), atol=1e-6)):
        return None
    lo, hi = int(np.round(units.min())), int(np.round(units.max())) + int(q["levels"]) - 1
    qmin, qmax = (0, 255) if activation_type == "uint8" else (-128, 127)
    if hi - lo > qmax - qmin:
        return None
    zero_point = min(max(qmin - lo, qmin), qmax)  # the grid's lowest point lands on qmin (or 0 stays inside)
    if lo + zero_point < qmin or hi + zero_point > qmax:
        return None
    return s, zero_point


def quantizer(latent: dict[str, Any]) -> Quantizer:
    """The runtime's own quantiser for a latent section, so export measures exactly what devices do."""
    q = latent["quantization"]
    spec = LatentSpec(tuple(latent["shape"]), latent["channel_axis"],
                      Quantization(q["bits"], q["levels"], tuple(q["offset"]), tuple(q["step"])))
    return Quantizer(spec)


def _extra_graphs(extra: list[ExtraGraph], opset: int) -> dict[str, onnx.ModelProto]:
    out = {}
    for g in extra:
        if g.module is not None:
            axes = g.dynamic_axes or {g.input_name: {0: "batch"}, g.output_name: {0: "batch"}}
            spec = GraphSpec(g.role, g.file, g.input_name, g.output_name, opset, dynamic_axes=axes)
            out[g.role] = graphs.export_graph(g.module, spec, torch.from_numpy(np.ascontiguousarray(g.example)))
        else:
            proto = onnx.ModelProto()
            proto.CopyFrom(g.onnx_model)
            out[g.role] = proto
    return out


def _check_extra(g: ExtraGraph, tmp: Path) -> GraphCheck:
    atol, rtol = g.tolerance
    spec = GraphSpec(g.role, g.file, g.input_name, g.output_name, atol=atol, rtol=rtol)

    def reference(x: np.ndarray) -> np.ndarray:
        return graphs.torch_run(g.module, x) if g.module is not None else np.asarray(g.reference(x))  # type: ignore[misc]

    return check_graph(spec, tmp / g.file, reference, [g.example[:1], g.example], extra_outputs=g.extra_outputs)


# --- checks and quality ----------------------------------------------------------------------------------


def run_graph(path: Path, x: np.ndarray, batch: int = 256) -> np.ndarray:
    sess = make_session(path)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def _torch_ref(module: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: graphs.torch_run(module, x)


def _verify(job: Job, specs: dict[str, GraphSpec], modules: dict[str, nn.Module], tmp: Path, val: np.ndarray,
            val_latent: np.ndarray) -> list[GraphCheck]:
    # Batch 1 and a batch > 1: the dynamic axis must really work; any-size graphs also at a second size.
    enc_batches = [val[:1], _at_least_two(val[:VERIFY_BATCH])]
    dec_batches = [val_latent[:1], _at_least_two(val_latent[:VERIFY_BATCH])]
    if job.input.dynamic_size:
        m = job.input.size_multiple
        other = np.pad(_at_least_two(val[:2]), ((0, 0), (0, 0), (0, m), (0, 2 * m)), mode="edge")
        size = f"{other.shape[2]}x{other.shape[3]}"
        try:
            z = graphs.torch_run(modules["encoder"], other)
            r = graphs.torch_run(modules["decoder"], z)
        except Exception as exc:  # the user's forward at another size
            raise ShapeMismatchError(f"dynamic_size: the model does not run at {size} in PyTorch "
                                     f"({type(exc).__name__}: {graphs._first(exc)}); it is not fully "
                                     "convolutional, export it without dynamic_size") from None
        if r.shape != other.shape:
            raise ShapeMismatchError(f"dynamic_size: at {size} the decoder gives {r.shape[1:]} for a {other.shape[1:]} "
                                     "input (a fixed-size layer such as Upsample(size=...)); export it without "
                                     "dynamic_size")
        enc_batches.append(other)
        dec_batches.append(z)
    latent_range = float(max(1.0, np.abs(val_latent).max()))
    checks = [
        check_graph(specs["encoder"], tmp / specs["encoder"].file, _torch_ref(modules["encoder"]), enc_batches,
                    scale=latent_range),
        check_graph(specs["decoder"], tmp / specs["decoder"].file, _torch_ref(modules["decoder"]), dec_batches),
    ]
    return checks


class Scorer:
    """Quality in dB as users see it: images by PSNR on pixels (decoder output mapped back and clipped, as
    the runtime does), tensors by SNR in the user's units (signal variance over reconstruction MSE)."""

    def __init__(self, adapter: ImageAdapter | TensorAdapter, reference: np.ndarray) -> None:
        self.adapter = adapter
        self.metric = "snr" if isinstance(adapter, TensorAdapter) else "psnr"
        self.reference = self._user(reference)

    def _user(self, graph_space: np.ndarray) -> np.ndarray:
        if isinstance(self.adapter, TensorAdapter):
            return self.adapter.postprocess(graph_space).astype(np.float64)
        return self.adapter.pixels01(graph_space).astype(np.float64) * 255.0

    def __call__(self, reconstruction: np.ndarray) -> float:
        rec = self._user(reconstruction)
        if self.metric == "psnr":
            return mean_psnr(psnr_per_image(rec, self.reference, batch=True))
        ref = self.reference
        mse = float(np.mean((rec - ref) ** 2))
        var = float(np.var(ref))
        return float(10 * np.log10(max(var, 1e-30) / max(mse, 1e-30)))


def _quality(job: Job, tmp: Path, specs: dict[str, GraphSpec], val: np.ndarray, y: np.ndarray,
             requant: Callable, scorer: Scorer) -> dict[str, Any]:
    """Validation quality (dB): PyTorch, ONNX fp32, and ONNX fp32 with the latent quantised as deployed.
    `y`: the fp32 encoder's latents of `val`; `requant`: the runtime's quantise-dequantise."""
    m = scorer.metric
    torch_rec = graphs.torch_run(job.decoder, graphs.torch_run(job.encoder, val))
    dec = tmp / specs["decoder"].file
    return {
        "metric": m,
        "images" if m == "psnr" else "items": len(val),
        f"{m}_torch": scorer(torch_rec),
        f"{m}_onnx_fp32": scorer(run_graph(dec, y)),
        f"{m}_fp32_quantized_latent": scorer(run_graph(dec, requant(y))),
    }


def _preset(device: str | None) -> tuple[Int8Settings, str]:
    if device is None:
        return Int8Settings(), "default (x86-64, U8S8 per-channel, 7-bit weights)"
    from edgeae.runtime.devices import load_profile

    try:
        profile = load_profile(device)
    except EdgeaeError as exc:
        raise ExportError(str(exc)) from None
    return Int8Settings.from_any(profile.int8), profile.name


def _int8(job: Job, specs: dict[str, GraphSpec], tmp: Path, y: np.ndarray, requant: Callable,
          latent: dict[str, Any], quality: dict[str, Any], checks: list[GraphCheck], modules: dict[str, nn.Module],
          meta: dict[str, str], scorer: Scorer) -> dict[str, Any]:
    preset, preset_name = _preset(job.device)
    metric = scorer.metric
    train, val = job.train, job.val
    n = max(1, min(job.calibration_samples, len(train)))
    calib_x = train[:n]
    calib = {"encoder": calib_x, "decoder": run_graph(tmp / specs["encoder"].file, calib_x)}
    report: dict[str, Any] = {"preset": {"name": preset_name, **preset.to_dict()}, "calibration_samples": n,
                              "max_drop_db": job.max_int8_drop_db, "graphs": {}}
    # One graph int8, the other fp32, both around the runtime's latent quantisation; the reference is the
    # fp32 pipeline with the same quantisation.
    y_hat = requant(y)
    reference = quality[f"{metric}_fp32_quantized_latent"]
    keep = job.int8_keep_fp32 or {}
    for role, spec in specs.items():
        if role not in job.int8_roles:
            continue
        fp32, int8 = tmp / spec.file, tmp / spec.int8_file
        grid = latent_grid(latent, preset.activation_type) if role == "encoder" else None
        try:
            kept = quantize_graph(fp32, int8, spec.input_name, calib[role], preset, keep.get(role, ()),
                                  output_grid=(spec.output_name, *grid) if grid else None)
        except ValueError as exc:
            raise ExportError(f"int8 {role}: {exc}") from None
        model = onnx.load(str(int8))
        del model.graph.value_info[:]  # the pre-processing's shape annotations: onnxruntime infers them anyway
        graphs.set_metadata(model, {**meta, "edgeae.role": role, "edgeae.precision": "int8"})
        graphs.save(model, int8)
        batches = [val[:1], val[:VERIFY_BATCH]] if role == "encoder" else [y[:1], y[:VERIFY_BATCH]]
        check = check_graph(spec, int8, _torch_ref(modules[role]), batches, compare_values=False,
                            file_label=spec.int8_file, precision="int8")
        checks.append(check)
        rec = run_graph(tmp / specs["decoder"].file, requant(run_graph(int8, val))) if role == "encoder" \
            else run_graph(int8, y_hat)
        score = scorer(rec)
        drop = reference - score
        entry = {metric: score, f"{metric}_drop_db": drop, "max_abs_error_vs_fp32": check.max_abs_error,
                 "bytes_fp32": fp32.stat().st_size, "bytes_int8": int8.stat().st_size,
                 "size_ratio": int8.stat().st_size / fp32.stat().st_size, "kept_fp32": kept,
                 "output_on_latent_grid": grid is not None}
        if job.measure_speed:
            entry.update(_speed(fp32, int8, batches[0]))
        report["graphs"][role] = entry
        if drop > job.max_int8_drop_db:
            check.fail(f"int8 {role} loses {drop:.2f} dB {metric.upper()} (limit {job.max_int8_drop_db} dB); "
                       "raise --max-int8-drop-db, add --calibration-samples, or export without --int8", ExportError)
    # The pipeline with every quantised graph int8 (an fp32 decoder when only the encoder is).
    enc, dec = (tmp / (s.int8_file if r in job.int8_roles else s.file) for r, s in specs.items())
    quality[f"{metric}_onnx_int8"] = scorer(run_graph(dec, requant(run_graph(enc, val))))
    return report


def _speed(fp32: Path, int8: Path, x: np.ndarray) -> dict[str, Any]:
    """Batch-1, one-thread medians on this host: int8 is often *slower* on tiny graphs, and users must see it."""
    from edgeae.profiling.host import cpu_model

    t32, t8 = median_latency_us(fp32, x), median_latency_us(int8, x)
    return {"latency_us_fp32": t32, "latency_us_int8": t8, "int8_speedup": t32 / t8, "int8_faster": t8 < t32,
            "measured_on": platform.machine() + " " + cpu_model()}


def _stamp_fingerprint(job: Job, specs: dict[str, GraphSpec], protos: dict[str, onnx.ModelProto],
                       extras: dict[str, onnx.ModelProto], latent: dict[str, Any], entropy: dict[str, Any],
                       meta: dict[str, str], tmp: Path) -> tuple[str, dict[str, str]]:
    """The fingerprint over every graph written (fp32, extra and int8 twins; docs/MANIFEST.md), then written
    into each graph's metadata -- which its digest leaves out, so stamping changes no digest. Returns it and
    the int8 twins' digests (role -> digest)."""
    int8_models = {role: onnx.load(str(tmp / s.int8_file)) for role, s in specs.items() if role in job.int8_roles}
    int8_digests = {role: graphs.graph_digest(m) for role, m in int8_models.items()}
    fp = graphs.fingerprint(graphs.graph_digest(protos["encoder"]), graphs.graph_digest(protos["decoder"]),
                            graphs.tables_digest(latent, entropy),
                            *(graphs.graph_digest(p) for _, p in sorted(extras.items())),
                            *(d for _, d in sorted(int8_digests.items())))
    stamp = {**meta, "edgeae.fingerprint": fp}
    for role, proto in [*protos.items(), *extras.items()]:
        graphs.set_metadata(proto, stamp)
        graphs.save(proto, tmp / f"{role}.onnx" if role in extras else tmp / specs[role].file)
    for role, model in int8_models.items():
        graphs.set_metadata(model, stamp)
        graphs.save(model, tmp / specs[role].int8_file)
    return fp, int8_digests


def _manifest(job: Job, specs: dict[str, GraphSpec], latent: dict[str, Any], entropy: dict[str, Any], fp: str,
              quality: dict[str, Any], int8: dict[str, Any] | None, checks: list[GraphCheck],
              extras: list[ExtraGraph], tmp: Path, int8_digests: dict[str, str]) -> dict[str, Any]:
    files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(tmp.glob("*.onnx"))}
    # "digest": the metadata-free sha256 that enters the fingerprint, so one side of a bundle can be verified
    # alone (the runtime keeps it once its GraphEntry knows the field).
    fp32 = {role: onnx.load(str(tmp / s.file)) for role, s in specs.items()}  # as written, metadata included
    graph_section: dict[str, Any] = {
        role: {"file": s.file, "input": s.input_name, "output": s.output_name, "opset": s.opset,
               "int8_file": s.int8_file if role in job.int8_roles else None,
               "digest": graphs.graph_digest(fp32[role])} for role, s in specs.items()}
    for role, digest in int8_digests.items():  # the int8 twins are part of the fingerprint too
        graph_section[role]["int8_digest"] = digest
    if job.stride and job.input.dynamic_size:  # an any-size image bundle: tiles where the graphs are local
        for role, scale in (("encoder", Fraction(job.stride)), ("decoder", Fraction(1, job.stride))):
            int8_file = graph_section[role]["int8_file"]
            models = [fp32[role]] + ([onnx.load(str(tmp / int8_file))] if int8_file else [])
            halos = [graph_halo(m, scale) for m in models]
            if None not in halos:
                graph_section[role]["halo"] = max(h for h in halos if h is not None)
    for g in sorted(extras, key=lambda g: g.role):
        proto = onnx.load(str(tmp / g.file))
        opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=job.opset)
        graph_section[g.role] = {"file": g.file, "input": g.input_name, "output": g.output_name,
                                 "opset": int(opset), "int8_file": None, "digest": graphs.graph_digest(proto)}
    parity = {}
    for c in checks:
        parity[c.role + ("" if c.precision == "fp32" else ".int8")] = c.to_dict()
    return {
        "schema": "edgeae.bundle",
        "version": MANIFEST_VERSION,
        "name": job.name,
        "model": job.model_info,
        "input": job.input.to_dict(),
        "graphs": graph_section,
        "latent": latent,
        "entropy": entropy,
        "fingerprint": fp,
        "files": files,
        "quality": {**quality, "parity": parity},
        "int8": int8,
        "source": job.source,
        "tools": {"edgeae": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                  "onnxruntime": ort.__version__, "python": platform.python_version()},
    }
