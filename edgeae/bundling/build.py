"""Run directory -> bundle: a thin adapter over `edgeae.export` (core.py), the one exporter.

It knows what only a run directory knows (the family and config, the dataset and its split, other input
sizes of fully convolutional families) and hands the model and its images to the core.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgeae.bundling import core
from edgeae.bundling.core import ExportResult, latent_grid, latent_model, quantizer  # noqa: F401 (public here too)
from edgeae.bundling.inputs import InputSpec
from edgeae.bundling.spec import DEFAULT_OPSET, SUPPORTED_OPSETS
from edgeae.errors import DataError, ExportError
from edgeae.train.data import DataSpec, load_dataset, photos_resized
from edgeae.train.models import AutoEncoder, build_model, make_config
from edgeae.train.rundir import LoadedRun, load_run

MAX_LATENT_CALIBRATION = core.MAX_CALIBRATION
MAX_VALIDATION = core.MAX_VALIDATION
ANY_SIZE_FAMILIES = ("conv", "codec", "hyperprior", "hyperprior-vr")  # fully convolutional: bundles take any H, W (docs/MANIFEST.md)


@dataclass
class ExportOptions:
    out: Path | None = None  # default: export/<run name>/
    opset: int = DEFAULT_OPSET
    int8: bool = False
    int8_roles: tuple[str, ...] | None = None  # only these graphs int8 (e.g. ("encoder",)); implies int8
    calibration_samples: int = 256
    latent_bits: int = 8
    device: str | None = None  # device profile name or TOML path (int8 preset)
    max_int8_drop_db: float = 0.5
    # Per graph role, compute nodes --int8 leaves in fp32 ("first" / "last"); none by default.
    int8_keep_fp32: dict[str, tuple[str, ...]] | None = None
    input_size: tuple[int, int] | None = None  # fully convolutional families only
    calibration_data: Path | None = None  # .npy (N, C, H, W) / (N, H, W[, C]) images, uint8 or float [0, 1]
    force: bool = False
    measure_speed: bool = True


def export_run(run_dir: str | os.PathLike[str], options: ExportOptions | None = None) -> ExportResult:
    """Export a trained run as a bundle. Builds in a temporary directory; a failure leaves nothing behind."""
    opts = options or ExportOptions()
    if opts.opset not in SUPPORTED_OPSETS:
        raise ExportError(f"opset {opts.opset} is not supported; use {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}")
    run = load_run(run_dir)
    data = run.config.get("data", {})
    if opts.input_size is None and data.get("crop") and data.get("val_crop") not in (None, data["crop"]):
        # trained on random crops, validated on centre crops of another side: export at the smaller side, to
        # which both are cut (a fully convolutional model; the bundle takes any size anyway)
        side = min(data["crop"], data["val_crop"])
        opts = dataclasses.replace(opts, input_size=(side, side))
    model = _model_for_size(run, opts.input_size)
    train, val = _images(run, model, opts)
    c, h, w = model.config.in_shape
    spec = InputSpec(channels=c, height=h, width=w, channel_order=run.config["data"].get("channel_order"),
                     dynamic_size=_any_size(run.family, model),
                     size_multiple=_size_multiple(model) if _any_size(run.family, model) else None)
    return core.export(
        model=model, out=Path(opts.out) if opts.out else Path("export") / run.name, input=spec,
        calibration=train, validation=val, latent_bits=opts.latent_bits, int8=opts.int8_roles or opts.int8,
        opset=opts.opset,
        atol=1e-4, rtol=0.0, name=run.name, device=opts.device, max_int8_drop_db=opts.max_int8_drop_db,
        calibration_samples=opts.calibration_samples, int8_keep_fp32=opts.int8_keep_fp32,
        measure_speed=opts.measure_speed, force=opts.force,
        model_info={"family": run.family, "config": json.loads(json.dumps(model.config.to_dict()))},
        source={"run_dir": str(run.path.resolve())})


def _size_multiple(model: AutoEncoder) -> int | None:
    """What an any-size bundle pads images to: the model's `size_multiple` where it has one (a hyperprior: y's
    stride, the runtime pads y itself for z), else its total stride."""
    return getattr(model, "size_multiple", getattr(model, "stride", None))


def _any_size(family: str, model: AutoEncoder) -> bool:
    """Fully convolutional families export any-size graphs when the size is a whole number of strides."""
    if family not in ANY_SIZE_FAMILIES:
        return False
    _, h, w = model.config.in_shape
    lat = model.latent_shape
    return len(lat) == 3 and h % lat[1] == 0 and w % lat[2] == 0 and h // lat[1] == w // lat[2]


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


def _images(run: LoadedRun, model: AutoEncoder, opts: ExportOptions) -> tuple[np.ndarray | Path, np.ndarray]:
    """Calibration data (training images, or --calibration-data) and validation images (for parity/quality)."""
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
    if tuple(val.shape[1:]) != shape:
        raise ExportError(f"validation images have shape {tuple(val.shape[1:])} but the model takes {shape}")
    # The core reads --calibration-data (.npy or a folder of images) and checks its shape and range.
    calibration = opts.calibration_data if opts.calibration_data is not None else train
    return calibration, np.ascontiguousarray(val[:MAX_VALIDATION])
