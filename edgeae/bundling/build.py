"""Run directory -> verified bundle: two ONNX graphs (+ int8 twins), latent quantisation, entropy tables, manifest."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from edgeae import __version__
from edgeae.bundling import calibrate, graphs
from edgeae.bundling.int8 import Int8Preset, median_latency_us, quantize_graph
from edgeae.bundling.spec import DEFAULT_OPSET, MANIFEST_VERSION, SUPPORTED_OPSETS, GraphSpec, graph_specs
from edgeae.bundling.verify import GraphCheck, check_graph, psnr
from edgeae.errors import DataError, ExportError
from edgeae.profiling.host import cpu_model
from edgeae.runtime.bundle import sha256_file
from edgeae.runtime.manifest import LatentSpec, Manifest, Quantization
from edgeae.runtime.quantize import Quantizer
from edgeae.train.data import DataSpec, load_dataset, photos_resized
from edgeae.train.models import AutoEncoder, build_model, make_config
from edgeae.train.rundir import AtomicDir, LoadedRun, load_run, write_json

MAX_LATENT_CALIBRATION = 4096
MAX_VALIDATION = 512


@dataclass
class ExportOptions:
    out: Path | None = None  # default: export/<run name>/
    opset: int = DEFAULT_OPSET
    int8: bool = False
    calibration_samples: int = 256
    latent_bits: int = 8
    device: str | None = None  # device profile name or TOML path (int8 preset)
    max_int8_drop_db: float = 0.5
    # Per graph role, compute nodes --int8 leaves in fp32 ("first" / "last"); none by default.
    int8_keep_fp32: dict[str, tuple[str, ...]] | None = None
    input_size: tuple[int, int] | None = None  # fully convolutional families only
    calibration_data: Path | None = None  # .npy of training-like images (N, C, H, W) in [0, 1]
    force: bool = False
    measure_speed: bool = True


@dataclass
class ExportResult:
    path: Path
    manifest: dict[str, Any]
    checks: list[GraphCheck] = field(default_factory=list)


def export_run(run_dir: str | os.PathLike[str], options: ExportOptions | None = None) -> ExportResult:
    """Export a trained run as a bundle. Builds in a temporary directory; a failure leaves nothing behind."""
    opts = options or ExportOptions()
    if opts.opset not in SUPPORTED_OPSETS:
        raise ExportError(f"opset {opts.opset} is not supported; use {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}")
    run = load_run(run_dir)
    model = _model_for_size(run, opts.input_size)
    train, val = _images(run, model, opts)
    out = Path(opts.out) if opts.out else Path("export") / run.name
    with AtomicDir(out, overwrite=opts.force) as tmp:
        manifest, checks = _build(run, model, train, val, opts, tmp)
    return ExportResult(path=out, manifest=manifest, checks=checks)


def _model_for_size(run: LoadedRun, size: tuple[int, int] | None) -> AutoEncoder:
    if size is None:
        return run.model
    c = run.config["model"]["config"]["in_shape"][0]
    values = {**run.config["model"]["config"], "in_shape": (c, *size)}
    try:
        model = build_model(run.family, make_config(run.family, **values))
        model.load_state_dict(run.model.state_dict(), strict=True)
        model.encoder(torch.zeros(1, c, *size))
    except (RuntimeError, ValueError) as exc:
        raise ExportError(f"--input-size {size[0]},{size[1]} does not fit the {run.family!r} model "
                          f"(only fully convolutional families take other sizes): {str(exc).splitlines()[0]}") from None
    model.eval()
    return model


def _images(run: LoadedRun, model: AutoEncoder, opts: ExportOptions) -> tuple[np.ndarray, np.ndarray]:
    """Training images for calibration and validation images for parity/quality, at the model's input shape."""
    shape = tuple(model.config.in_shape)
    spec = DataSpec.from_dict(run.config["data"])
    if opts.input_size and spec.name in ("photos", "images"):
        # Patch datasets can be re-cut at the export size: square patches, then cropped to (H, W).
        spec = DataSpec.from_dict({**spec.to_dict(), "patch": max(opts.input_size)})
    h, w = opts.input_size or (0, 0)
    try:
        data = load_dataset(spec)
        train, val = data.train[..., :h or None, :w or None], data.val[..., :h or None, :w or None]
    except DataError:
        if not (opts.input_size and spec.name == "photos"):
            raise
        # Larger than a held-out photograph can be cut into: the whole photographs, resized.
        train, val = photos_resized(h, w, spec.color)
    if opts.calibration_data is not None:
        train = _load_calibration(opts.calibration_data)
    for what, arr in (("calibration", train), ("validation", val)):
        if tuple(arr.shape[1:]) != shape:
            raise ExportError(f"{what} images have shape {tuple(arr.shape[1:])} but the model takes {shape}; "
                              "pass --calibration-data with images of the model's shape")
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(train))[:MAX_LATENT_CALIBRATION]
    return np.ascontiguousarray(train[np.sort(pick)]), np.ascontiguousarray(val[:MAX_VALIDATION])


def _load_calibration(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read --calibration-data {path}: {exc}") from None
    if arr.ndim != 4 or arr.dtype.kind != "f":
        raise ExportError(f"--calibration-data must be float (N, C, H, W) in [0, 1], got {arr.dtype} {arr.shape}")
    return arr.astype(np.float32)


def _run_graph(path: Path, x: np.ndarray, batch: int = 256) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def _build(run: LoadedRun, model, train, val, opts: ExportOptions, tmp: Path) -> tuple[dict[str, Any], list[GraphCheck]]:
    specs = graph_specs(opts.opset)
    modules = {"encoder": model.encoder, "decoder": model.decoder}
    example_latent = graphs.torch_run(model.encoder, val[:2])
    examples = {"encoder": torch.from_numpy(val[:2]), "decoder": torch.from_numpy(example_latent)}
    protos = {role: graphs.export_graph(modules[role], spec, examples[role]) for role, spec in specs.items()}
    for role, spec in specs.items():
        graphs.save(protos[role], tmp / spec.file)

    latents = _run_graph(tmp / specs["encoder"].file, train)
    latent, entropy = _latent_model(model, latents, opts.latent_bits)
    fp = graphs.fingerprint(graphs.graph_digest(protos["encoder"]), graphs.graph_digest(protos["decoder"]),
                            graphs.tables_digest(latent, entropy))
    meta = {"edgeae.fingerprint": fp, "edgeae.manifest_version": str(MANIFEST_VERSION)}
    for role, spec in specs.items():
        graphs.set_metadata(protos[role], {**meta, "edgeae.role": role})
        graphs.save(protos[role], tmp / spec.file)

    val_latent = graphs.torch_run(model.encoder, val)
    checks = _verify(specs, modules, tmp, val, val_latent)
    # Quality is judged the way devices run: encoder -> the runtime's latent quantisation -> decoder.
    q = quantizer(latent)

    def requant(z: np.ndarray) -> np.ndarray:
        return q.dequantize(q.quantize(z))

    y = _run_graph(tmp / specs["encoder"].file, val)
    quality = _quality(model, tmp, specs, val, y, requant)
    int8 = _int8(specs, tmp, train, val, y, requant, latent, quality, opts, checks, modules, meta) \
        if opts.int8 else None
    failures = [f for c in checks for f in c.failures]
    if failures:
        raise ExportError("export verification failed", failures)
    # Round-trip through the runtime's validator: the exporter never writes a manifest the runtime refuses.
    manifest = Manifest.from_dict(_manifest(run, model, specs, latent, entropy, fp, quality, int8, checks, tmp)).to_dict()
    write_json(tmp / "manifest.json", manifest)
    return manifest, checks


def _latent_model(model, latents: np.ndarray, bits: int) -> tuple[dict[str, Any], dict[str, Any]]:
    axis = 1
    tables = getattr(model, "entropy_tables", None)
    if tables is not None:  # the learned codec: integer rounding and its learned prior
        t = tables(calibrate.PRECISION)
        quant: dict[str, Any] = {"bits": int(np.ceil(np.log2(t["levels"]))), "levels": int(t["levels"]),
                 "offset": [float(v) for v in t["offset"]], "step": [float(v) for v in t["step"]]}
        entropy = {"coder": "range", "precision": calibrate.PRECISION,
                   "frequencies": np.asarray(t["frequencies"], np.int64).tolist()}
    else:
        quant = calibrate.calibrate_quantization(latents, bits)
        symbols = quantizer({"shape": latents.shape[1:], "channel_axis": axis, "quantization": quant}).quantize(latents)
        entropy = calibrate.histogram_tables(symbols, quant["levels"], axis)
    latent = {"shape": list(latents.shape[1:]), "channel_axis": axis, "quantization": quant}
    return latent, entropy


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


def _verify(specs, modules, tmp: Path, val: np.ndarray, val_latent: np.ndarray) -> list[GraphCheck]:
    # Batch 1 and a batch > 1: the dynamic axis must really work.
    enc_batches = [val[:1], val[: min(7, len(val))]]
    dec_batches = [val_latent[:1], val_latent[: min(7, len(val_latent))]]
    latent_range = float(max(1.0, np.abs(val_latent).max()))
    return [
        check_graph(specs["encoder"], tmp / specs["encoder"].file, modules["encoder"], enc_batches, scale=latent_range),
        check_graph(specs["decoder"], tmp / specs["decoder"].file, modules["decoder"], dec_batches),
    ]


def _quality(model, tmp: Path, specs, val: np.ndarray, y: np.ndarray, requant: Callable) -> dict[str, Any]:
    """Validation PSNR (dB, [0, 1] scale): PyTorch, ONNX fp32, and ONNX fp32 with the latent quantised.
    `y`: the fp32 encoder's latents of `val`; `requant`: the runtime's quantise-dequantise."""
    y_hat = requant(y)
    with torch.no_grad():
        torch_rec = model(torch.from_numpy(val)).x_hat.numpy()
    return {
        "images": len(val),
        "psnr_torch": psnr(torch_rec, val),
        "psnr_onnx_fp32": psnr(_run_graph(tmp / specs["decoder"].file, y), val),
        "psnr_fp32_quantized_latent": psnr(_run_graph(tmp / specs["decoder"].file, y_hat), val),
    }


def _preset(device: str | None) -> tuple[Int8Preset, str]:
    if device is None:
        return Int8Preset(), "default (x86-64, U8S8 per-channel)"
    from edgeae.runtime.devices import load_profile

    profile = load_profile(device)
    return Int8Preset.from_any(profile.int8), profile.name


def _int8(specs: dict[str, GraphSpec], tmp: Path, train, val, y, requant: Callable, latent, quality,
          opts: ExportOptions, checks: list[GraphCheck], modules, meta) -> dict[str, Any]:
    preset, preset_name = _preset(opts.device)
    n = max(1, min(opts.calibration_samples, len(train)))
    calib_x = train[:n]
    calib = {"encoder": calib_x, "decoder": _run_graph(tmp / specs["encoder"].file, calib_x)}
    report: dict[str, Any] = {"preset": {"name": preset_name, **preset.to_dict()}, "calibration_samples": n,
                              "max_drop_db": opts.max_int8_drop_db, "graphs": {}}
    # One graph int8, the other fp32, both around the runtime's latent quantisation; the reference is the
    # fp32 pipeline with the same quantisation.
    y_hat = requant(y)
    reference = quality["psnr_fp32_quantized_latent"]
    keep = opts.int8_keep_fp32 or {}
    for role, spec in specs.items():
        fp32, int8 = tmp / spec.file, tmp / spec.int8_file
        grid = latent_grid(latent, preset.activation_type) if role == "encoder" else None
        try:
            kept = quantize_graph(fp32, int8, spec.input_name, calib[role], preset, keep.get(role, ()),
                                  output_grid=(spec.output_name, *grid) if grid else None)
        except ValueError as exc:
            raise ExportError(f"int8 {role}: {exc}") from None
        model = onnx.load(str(int8))
        graphs.set_metadata(model, {**meta, "edgeae.role": role, "edgeae.precision": "int8"})
        graphs.save(model, int8)
        batches = [val[:1], val[:7]] if role == "encoder" else [y[:1], y[:7]]
        check = check_graph(spec, int8, modules[role], batches, compare_values=False, file_label=spec.int8_file)
        checks.append(check)
        rec = _run_graph(tmp / specs["decoder"].file, requant(_run_graph(int8, val))) if role == "encoder" \
            else _run_graph(int8, y_hat)
        drop = reference - psnr(rec, val)
        entry = {"psnr": psnr(rec, val), "psnr_drop_db": drop, "max_abs_error_vs_fp32": check.max_abs_error,
                 "bytes_fp32": fp32.stat().st_size, "bytes_int8": int8.stat().st_size,
                 "size_ratio": int8.stat().st_size / fp32.stat().st_size, "kept_fp32": kept,
                 "output_on_latent_grid": grid is not None}
        if opts.measure_speed:
            entry.update(_speed(fp32, int8, batches[0]))
        report["graphs"][role] = entry
        if drop > opts.max_int8_drop_db:
            check.failures.append(f"int8 {role} loses {drop:.2f} dB PSNR (limit {opts.max_int8_drop_db} dB); "
                                  "raise --max-int8-drop-db, add --calibration-samples, or export without --int8")
    quality["psnr_onnx_int8"] = psnr(_run_graph(tmp / specs["decoder"].int8_file,
                                                requant(_run_graph(tmp / specs["encoder"].int8_file, val))), val)
    return report


def _speed(fp32: Path, int8: Path, x: np.ndarray) -> dict[str, Any]:
    """Batch-1, one-thread medians on this host: int8 is often *slower* on tiny graphs, and users must see it."""
    t32, t8 = median_latency_us(fp32, x), median_latency_us(int8, x)
    return {"latency_us_fp32": t32, "latency_us_int8": t8, "int8_speedup": t32 / t8, "int8_faster": t8 < t32,
            "measured_on": platform.machine() + " " + cpu_model()}


def _manifest(run: LoadedRun, model, specs, latent, entropy, fp, quality, int8, checks, tmp: Path) -> dict[str, Any]:
    c, h, w = model.config.in_shape
    files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(tmp.glob("*.onnx"))}
    return {
        "schema": "edgeae.bundle",
        "version": MANIFEST_VERSION,
        "name": run.name,
        "model": {"family": run.family, "config": json.loads(json.dumps(model.config.to_dict()))},
        "input": {"shape": [c, h, w], "dtype": "float32", "layout": "NCHW",
                  "channel_order": run.config["data"].get("channel_order", "L" if c == 1 else "RGB"),
                  "scale": 1.0 / 255.0, "offset": 0.0},
        "graphs": {role: {"file": s.file, "input": s.input_name, "output": s.output_name, "opset": s.opset,
                          "int8_file": s.int8_file if int8 else None} for role, s in specs.items()},
        "latent": latent,
        "entropy": entropy,
        "fingerprint": fp,
        "files": files,
        "quality": {**quality, "parity": {ch.role + ("" if i < 2 else ".int8"): {"max_abs_error": ch.max_abs_error,
                    "tolerance": ch.tolerance, "batches": ch.batches} for i, ch in enumerate(checks)}},
        "int8": int8,
        "source": {"run_dir": str(run.path.resolve())},
        "tools": {"edgeae": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                  "onnxruntime": ort.__version__, "python": platform.python_version()},
    }
