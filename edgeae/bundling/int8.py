"""int8: onnxruntime static quantisation (QDQ) calibrated on training data, after its pre-processing pass."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edgeae.runtime.devices import Int8Settings
from edgeae.runtime.session import make_session


class _Reader:
    """onnxruntime CalibrationDataReader over an array, in small batches."""

    def __init__(self, input_name: str, data: np.ndarray, batch: int = 32) -> None:
        self.items = iter([{input_name: data[i : i + batch]} for i in range(0, len(data), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)


# Nodes that carry the weights; "first" / "last" in keep_fp32 name the first / last of these in graph order.
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
KEEP_FP32_CHOICES = ("first", "last")


def compute_nodes(model: Any) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type in COMPUTE_OPS]


def quantize_graph(fp32_path: Path, out_path: Path, input_name: str, calibration: np.ndarray,
                   preset: Int8Settings, keep_fp32: Sequence[str] = (),
                   output_grid: tuple[str, float, int] | None = None) -> list[str]:
    """Pre-process (shape inference + optimisation), then static QDQ quantisation calibrated on `calibration`.

    `keep_fp32`: "first" and/or "last" compute node left in fp32 (the usual first/last-layer exception: a
    codec's latent projection feeds the rounding directly). Returns the names of the nodes left in fp32.

    `output_grid` = (output name, scale, zero point): quantise that graph output on exactly this grid instead
    of a calibrated one. When it is the latent's own integer grid, the int8 output *is* the rounded latent,
    so the output quantisation adds no error at all (see latent_grid in build.py)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    for field in ("activation_type", "weight_type"):
        if getattr(preset, field) not in types:
            raise ValueError(f"int8 preset {field} must be 'uint8' or 'int8', got {getattr(preset, field)!r}")
    with _quiet_root_logger(), tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        except AssertionError:
            # Symbolic shape inference asserts on the dense families' Reshape with a dynamic batch;
            # ONNX's own shape inference is enough for those graphs.
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        excluded = _resolve_keep(pre, keep_fp32)
        quantize_static(
            str(pre), str(out_path), _Reader(input_name, calibration.astype(np.float32)),
            quant_format=QuantFormat.QDQ, per_channel=preset.per_channel, reduce_range=preset.reduce_range,
            activation_type=types[preset.activation_type], weight_type=types[preset.weight_type],
            nodes_to_exclude=excluded, extra_options=_grid_override(output_grid, types[preset.activation_type]),
        )
    return excluded


@contextmanager
def _quiet_root_logger():
    """The quantiser logs advice on the root logger at WARNING on every call: silence it for the call only."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _grid_override(grid: tuple[str, float, int] | None, qtype: Any) -> dict[str, Any]:
    if grid is None:
        return {}
    from onnxruntime.quantization import QuantType

    name, scale, zero_point = grid
    dtype = np.uint8 if qtype == QuantType.QUInt8 else np.int8
    return {"TensorQuantOverrides": {name: [{"scale": np.array(scale, np.float32),
                                             "zero_point": np.array(zero_point, dtype)}]}}


def _resolve_keep(path: Path, keep: Sequence[str]) -> list[str]:
    bad = [k for k in keep if k not in KEEP_FP32_CHOICES]
    if bad:
        raise ValueError(f"keep_fp32 takes {' / '.join(KEEP_FP32_CHOICES)}, got {', '.join(map(repr, bad))}")
    if not keep:
        return []
    import onnx

    nodes = compute_nodes(onnx.load(str(path)))
    picked = ([nodes[0]] if "first" in keep else []) + ([nodes[-1]] if "last" in keep else [])
    return list(dict.fromkeys(picked))


def median_latency_us(path: Path, x: np.ndarray, repeats: int = 7, min_seconds: float = 0.05) -> float:
    """Median per-call latency, one thread: each repeat times as many calls as fill `min_seconds`."""
    sess = make_session(path, threads=1)
    name = sess.get_inputs()[0].name
    for _ in range(5):
        sess.run(None, {name: x})
    t0, calls = time.perf_counter(), 0
    while time.perf_counter() - t0 < min_seconds / 5:
        sess.run(None, {name: x})
        calls += 1
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            sess.run(None, {name: x})
        times.append((time.perf_counter() - t0) / calls)
    return float(np.median(times) * 1e6)
